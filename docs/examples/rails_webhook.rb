# Verifies an ElChat webhook (ElChat-Signature: t=<unix>,v1=<hex HMAC-SHA256
# of "<t>.<raw body>">) with the standard library only, and returns the event.
require "json"
require "openssl"

module ElchatWebhook
  TOLERANCE = 300 # seconds: an older timestamp is a replay

  def self.verify!(body, header, secret, now: Time.now.to_i)
    parts = header.to_s.split(",").map { |kv| kv.strip.split("=", 2) }
    t = parts.find { |k, _| k == "t" }&.last.to_s
    raise ArgumentError, "stale or missing timestamp" unless t.match?(/\A\d+\z/) && (now - t.to_i).abs <= TOLERANCE
    expected = OpenSSL::HMAC.hexdigest("SHA256", secret, "#{t}.#{body}")
    ok = parts.any? { |k, v| k == "v1" && v.bytesize == expected.bytesize && OpenSSL.fixed_length_secure_compare(v, expected) }
    raise ArgumentError, "bad signature" unless ok
    JSON.parse(body)
  end
end

# A bare receiver for trying it out (ruby rails_webhook.rb PORT): prints each
# verified event as one JSON line, answers 400 to anything unsigned.
if __FILE__ == $PROGRAM_NAME
  require "socket"
  server = TCPServer.new("127.0.0.1", Integer(ARGV.fetch(0)))
  $stdout.sync = true
  puts "listening"
  loop do
    conn = server.accept
    headers = {}
    conn.gets # request line
    while (line = conn.gets) && line != "\r\n"
      k, v = line.split(":", 2)
      headers[k.downcase] = v.strip
    end
    body = conn.read(headers.fetch("content-length", "0").to_i)
    begin
      event = ElchatWebhook.verify!(body, headers["elchat-signature"], ENV.fetch("ELCHAT_WEBHOOK_SECRET"))
      puts JSON.generate(event)
      conn.write "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    rescue ArgumentError, JSON::ParserError
      conn.write "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    end
    conn.close
  end
end
