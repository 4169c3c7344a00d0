# frozen_string_literal: true
# Publishes an event to ElChat from any app with plain Redis PUBLISH on the
# "<prefix>publish" channel (pkg/redisbus/doc.go):
#
#   REDIS_URL=... ELCHAT_REDIS_PREFIX=elchat: ruby test/ruby/publish.rb TOPIC EVENT PAYLOAD_JSON
#
# Prints the number of subscribers (ElChat nodes) that received it.
require "json"
require "redis"

topic, event, payload_json = ARGV
abort "usage: publish.rb TOPIC EVENT PAYLOAD_JSON" if topic.nil? || event.nil?
prefix = ENV.fetch("ELCHAT_REDIS_PREFIX", "elchat:")
redis = Redis.new(url: ENV.fetch("REDIS_URL") { abort "set REDIS_URL" })
message = JSON.generate({ topic: topic, event: event, payload: JSON.parse(payload_json || "{}") })
puts redis.publish("#{prefix}publish", message)
redis.close
