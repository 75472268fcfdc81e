"""Secrets (device, enrollment and API tokens): generated with a recognisable prefix, stored
only as a SHA-256 digest, shown once.

A fast hash is right here, unlike for passwords: the tokens carry 256 bits of randomness, so
there is nothing to brute-force, and a constant-time indexed lookup keeps every request cheap.
"""

from __future__ import annotations

import hashlib
import secrets

DEVICE_PREFIX = "efd_"
ENROLLMENT_PREFIX = "efe_"
USER_PREFIX = "efu_"


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def display_prefix(token: str) -> str:
    """The first characters, safe to show so people can tell tokens apart."""
    return token[:12]
