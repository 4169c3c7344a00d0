"""ElChat chat grant: lets the signed-in user open the chat with peer when
ElChat runs with --chat-policy granted. Render it next to the "message this
user" button; the browser passes it in the chat join: {grant: "<jwt>"}.
Put this file in your app as chat/elchat_grant.py; it needs PyJWT.
"""
import os
import sys
import time

import jwt

TTL = 3600  # seconds; a grant is needed once, the chat then stays open


def mint(user_id, peer_id, ttl=TTL, secret=None):
    """Return an HS256 JWT with sub (the user), peer and exp."""
    secret = secret or os.environ["ELCHAT_SECRET"]  # or settings.ELCHAT_SECRET
    token = jwt.encode({"sub": str(user_id), "peer": str(peer_id), "exp": int(time.time()) + ttl},
                       secret, algorithm="HS256")
    return token.decode("ascii") if isinstance(token, bytes) else token


if __name__ == "__main__":
    # Command line, for scripts and tests: python3 django_grant.py USER_ID PEER_ID
    if len(sys.argv) != 3:
        sys.exit("usage: python3 django_grant.py USER_ID PEER_ID")
    print(mint(sys.argv[1], sys.argv[2]))
