"""ElChat token for the signed-in user, signed with the secret the ElChat
nodes run with (ELCHAT_SECRET). Put this file in your app as
chat/elchat_token.py; it needs PyJWT (pip install PyJWT).
"""
import os
import sys
import time

import jwt

TTL = 3600  # seconds


def mint(user_id, name, ttl=TTL, secret=None):
    """Return an HS256 JWT whose sub is the user's id as a string."""
    if secret is None:
        secret = os.environ["ELCHAT_SECRET"]  # or settings.ELCHAT_SECRET
    payload = {
        "sub": str(user_id),
        "name": str(name),
        "exp": int(time.time()) + ttl,
    }
    token = jwt.encode(payload, secret, algorithm="HS256")
    # PyJWT 1.x returned bytes; 2.x returns str.
    return token.decode("ascii") if isinstance(token, bytes) else token


if __name__ == "__main__":
    # Command line, for scripts and tests: python3 django_token.py USER_ID NAME
    if len(sys.argv) != 3:
        sys.exit("usage: python3 django_token.py USER_ID NAME")
    print(mint(sys.argv[1], sys.argv[2]))
