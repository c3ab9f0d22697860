"""A process holding a secret in memory until stdin closes: prints `SECRET <token>`."""

import os
import sys

secret = ("SBXSECRET-" + os.urandom(16).hex()).encode()
kept = bytearray(secret)  # a second copy in the heap
print("SECRET", secret.decode(), flush=True)
sys.stdin.read()
