# frozen_string_literal: true

# ElChat token for the signed-in user, signed with the secret the ElChat
# nodes run with (ELCHAT_SECRET). Put this file in app/lib/elchat_token.rb
# (or lib/ with autoload); it needs the `jwt` gem (Gemfile: gem "jwt").
require "jwt"

module ElchatToken
  TTL = 3600 # seconds; phoenix.js re-reads params on reconnect, so keep pages fresh

  # mint returns an HS256 JWT whose sub is the user's id as a string.
  def self.mint(user_id:, name:, ttl: TTL, secret: ENV.fetch("ELCHAT_SECRET"))
    payload = {
      sub: user_id.to_s,
      name: name.to_s,
      exp: Time.now.to_i + ttl
    }
    JWT.encode(payload, secret, "HS256")
  end
end

# Command line, for scripts and tests: ruby rails_token.rb USER_ID NAME
if $PROGRAM_NAME == __FILE__
  abort "usage: ruby #{__FILE__} USER_ID NAME" unless ARGV.length == 2
  puts ElchatToken.mint(user_id: ARGV[0], name: ARGV[1])
end
