# frozen_string_literal: true
# Mints an ElChat token the way a Rails host app does: an HS256 JWT signed
# with the shared secret, claims sub (user id, a string), name and exp.
#
#   ELCHAT_SECRET=... ruby test/ruby/mint_token.rb USER_ID NAME [TTL_SECONDS]
#
# Prints the token alone on stdout.
require "jwt"

user, name, ttl = ARGV
abort "usage: mint_token.rb USER_ID NAME [TTL_SECONDS]" if user.nil? || name.nil?
secret = ENV.fetch("ELCHAT_SECRET") { abort "set ELCHAT_SECRET" }
payload = { sub: user.to_s, name: name, exp: Time.now.to_i + Integer(ttl || 3600) }
puts JWT.encode(payload, secret, "HS256")
