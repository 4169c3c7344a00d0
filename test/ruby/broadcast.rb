# frozen_string_literal: true
# Broadcasts to an ElChat topic through Rails' real Action Cable server and
# its real Redis subscription adapter (ActionCable::SubscriptionAdapter::Redis
# from Debian's ruby-actioncable), exactly as a Rails app configured with
#
#   # config/cable.yml
#   production:
#     adapter: redis
#     url: <REDIS_URL>
#     channel_prefix: <PREFIX>
#
# does when it calls ActionCable.server.broadcast(...).
#
#   REDIS_URL=redis://127.0.0.1:6379/0 CABLE_PREFIX=myapp_production \
#     ruby test/ruby/broadcast.rb user:42 some_event '{"a":1}'
#
# The adapter publishes ActiveSupport::JSON.encode(message) on
# "<CABLE_PREFIX>:<broadcasting>". Prints the channel on stdout.
require "logger"
require "json"
require "active_support"
require "active_support/core_ext/string/inflections"
require "active_support/core_ext/hash/indifferent_access"
require "action_cable"
require "action_cable/subscription_adapter/redis"

broadcasting, event, payload_json = ARGV
abort "usage: broadcast.rb BROADCASTING EVENT PAYLOAD_JSON" if broadcasting.nil? || event.nil?
payload = JSON.parse(payload_json || "{}")

server = ActionCable.server
server.config.logger = Logger.new($stderr, level: Logger::WARN)
# Rails loads config/cable.yml with config_for(...).with_indifferent_access
# (actioncable's engine.rb); the adapter reads both "adapter" and
# :channel_prefix, so the keys must be indifferent here too.
server.config.cable = {
  "adapter" => "redis",
  "url" => ENV.fetch("REDIS_URL") { abort "set REDIS_URL" },
  "channel_prefix" => ENV.fetch("CABLE_PREFIX") { abort "set CABLE_PREFIX" },
}.with_indifferent_access
adapter = server.pubsub
abort "expected the Redis adapter, got #{adapter.class}" unless adapter.is_a?(ActionCable::SubscriptionAdapter::Redis)

server.broadcast(broadcasting, { event: event, payload: payload })
puts "#{server.config.cable[:channel_prefix]}:#{broadcasting}"
adapter.shutdown
