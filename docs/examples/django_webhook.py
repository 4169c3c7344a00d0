# Verifies an ElChat webhook (ElChat-Signature: t=<unix>,v1=<hex HMAC-SHA256
# of "<t>.<raw body>">) with the standard library only, and returns the event.
import hashlib
import hmac
import json
import time

TOLERANCE = 300  # seconds: an older timestamp is a replay


def verify_elchat_webhook(body: bytes, header: str, secret: str, now=None) -> dict:
    parts = [p.strip().split("=", 1) for p in (header or "").split(",") if "=" in p]
    t = next((v for k, v in parts if k == "t"), "")
    if not t.isdigit() or abs((now or time.time()) - int(t)) > TOLERANCE:
        raise ValueError("stale or missing timestamp")
    expected = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
    if not any(k == "v1" and hmac.compare_digest(v, expected) for k, v in parts):
        raise ValueError("bad signature")
    return json.loads(body)


# A bare receiver for trying it out (python3 django_webhook.py PORT): prints
# each verified event as one JSON line, answers 400 to anything unsigned.
if __name__ == "__main__":
    import os
    import sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                event = verify_elchat_webhook(body, self.headers.get("ElChat-Signature"), os.environ["ELCHAT_WEBHOOK_SECRET"])
            except ValueError:
                self.send_response(400)
            else:
                print(json.dumps(event), flush=True)
                self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", int(sys.argv[1])), Receiver)
    print("listening", flush=True)
    server.serve_forever()
