# frozen_string_literal: true

# ElChat chat grant: lets the signed-in user open the chat with peer when
# ElChat runs with --chat-policy granted. Render it next to the "message this
# user" button; the browser passes it in the chat join: {grant: "<jwt>"}.
# Put this file in app/lib/elchat_grant.rb; it needs the `jwt` gem.
require "jwt"

module ElchatGrant
  TTL = 3600 # seconds; a grant is needed once, the chat then stays open

  def self.mint(user_id:, peer_id:, ttl: TTL, secret: ENV.fetch("ELCHAT_SECRET"))
    JWT.encode({ sub: user_id.to_s, peer: peer_id.to_s, exp: Time.now.to_i + ttl }, secret, "HS256")
  end
end

# Command line, for scripts and tests: ruby rails_grant.rb USER_ID PEER_ID
if $PROGRAM_NAME == __FILE__
  abort "usage: ruby #{__FILE__} USER_ID PEER_ID" unless ARGV.length == 2
  puts ElchatGrant.mint(user_id: ARGV[0], peer_id: ARGV[1])
end
