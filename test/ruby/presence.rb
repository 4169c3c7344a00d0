# frozen_string_literal: true
# Reads ElChat presence straight from Redis with plain commands, as a Rails
# app sharing the Redis would (see pkg/redisbus/doc.go for the keys):
#
#   HGETALL <prefix>presence:<topic>   field "<user>\0<ref>" -> meta JSON
#   GET     <prefix>online:<user>      connections of the user (absent: 0)
#
#   REDIS_URL=... ELCHAT_REDIS_PREFIX=elchat: ruby test/ruby/presence.rb TOPIC USER...
#
# Prints {"topic":..., "presence":{user:[meta,...]}, "online":{user:n}} as JSON.
require "json"
require "redis"

topic, *users = ARGV
abort "usage: presence.rb TOPIC USER..." if topic.nil?
prefix = ENV.fetch("ELCHAT_REDIS_PREFIX", "elchat:")
redis = Redis.new(url: ENV.fetch("REDIS_URL") { abort "set REDIS_URL" })

presence = Hash.new { |h, k| h[k] = [] }
redis.hgetall("#{prefix}presence:#{topic}").each do |field, meta|
  user, _ref = field.split("\0", 2)
  presence[user] << JSON.parse(meta)
end
online = users.to_h { |u| [u, redis.get("#{prefix}online:#{u}").to_i] }
puts JSON.generate({ topic: topic, presence: presence, online: online })
redis.close
