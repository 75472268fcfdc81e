"""The server's Ed25519 artifact signature.

Scheme (agents implement exactly this; version 1):

- The signed message is the artifact's SHA-256 digest written as 64 lowercase hexadecimal ASCII
  characters, with nothing before or after it (no newline): ``sha256(file).hexdigest()
  .encode("ascii")``.
- The signature is the raw 64-byte Ed25519 signature (RFC 8032) of that message, transmitted
  base64-encoded (standard alphabet, with padding: 88 characters).
- The public key is published at ``GET /api/v1/agent/signing-key`` as PEM
  (SubjectPublicKeyInfo) and as the raw 32-byte key in base64, with a ``key_id`` (the first 16
  hex characters of the SHA-256 of the raw key).

An agent therefore downloads the file, hashes it, compares the digest with the ``sha256`` it was
given, and verifies the signature over that digest with the pinned public key; both must hold.

The private key lives in ``ARTIFACT_ROOT/keys/ed25519-private.pem`` (PKCS#8, mode 0600, its
directory 0700). It is generated on first use; concurrent first uses (web and worker) are safe:
each process writes its candidate to a private temporary file and ``os.link``s it into place, which
fails if a key is already there, and then everyone loads the one key that won.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import threading
import uuid
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings

SCHEME = "ed25519-sha256hex-v1"
KEY_FILE = "ed25519-private.pem"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_lock = threading.Lock()
_cache: dict[str, Ed25519PrivateKey] = {}


def key_path() -> Path:
    return Path(settings.ARTIFACT_ROOT) / "keys" / KEY_FILE


def _create_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.parent / f".tmp-{uuid.uuid4().hex}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        # link() never replaces an existing file: the first process to get here wins.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def private_key() -> Ed25519PrivateKey:
    """The server's signing key, generated on first use."""
    path = key_path()
    with _lock:
        cached = _cache.get(str(path))
        if cached is not None and path.exists():
            return cached
        if not path.exists():
            _create_key(path)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise RuntimeError(f"{path} does not hold an Ed25519 private key")
        _cache[str(path)] = key
        return key


def public_key() -> Ed25519PublicKey:
    return private_key().public_key()


def public_key_pem() -> str:
    return (
        public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def public_key_raw() -> bytes:
    return public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(raw: bytes | None = None) -> str:
    """A short fingerprint of a public key: the first 16 hex characters of sha256(raw key)."""
    return hashlib.sha256(raw if raw is not None else public_key_raw()).hexdigest()[:16]


def message(sha256_hex: str) -> bytes:
    """The exact bytes that are signed for an artifact: its lowercase hex digest in ASCII."""
    if not isinstance(sha256_hex, str) or not _HEX64.match(sha256_hex):
        raise ValueError("expected a sha256 digest as 64 lowercase hexadecimal characters")
    return sha256_hex.encode("ascii")


def sign(sha256_hex: str) -> str:
    """The base64 Ed25519 signature of an artifact with this digest."""
    return base64.b64encode(private_key().sign(message(sha256_hex))).decode("ascii")


def load_public_key(key: Ed25519PublicKey | str | bytes) -> Ed25519PublicKey:
    """Accepts a key object, a PEM (str or bytes), raw 32 bytes, or raw bytes in base64."""
    if isinstance(key, Ed25519PublicKey):
        return key
    data = key.encode("ascii") if isinstance(key, str) else key
    if data.lstrip().startswith(b"-----BEGIN"):
        loaded = serialization.load_pem_public_key(data)
        if not isinstance(loaded, Ed25519PublicKey):
            raise ValueError("the PEM does not hold an Ed25519 public key")
        return loaded
    raw = data if len(data) == 32 else base64.b64decode(data, validate=True)
    return Ed25519PublicKey.from_public_bytes(raw)


def verify(sha256_hex: str, signature_b64: str, public_key: Ed25519PublicKey | str | bytes) -> bool:
    """True when ``signature_b64`` is this scheme's signature of ``sha256_hex`` under the key."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        load_public_key(public_key).verify(signature, message(sha256_hex))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def verify_file(path: str | os.PathLike, sha256_hex: str, signature_b64: str, public_key) -> bool:
    """What an agent does before installing: the file hashes to ``sha256_hex`` and the signature
    over that digest verifies."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest() == sha256_hex and verify(sha256_hex, signature_b64, public_key)


def published() -> dict:
    """The body of ``GET /api/v1/agent/signing-key``."""
    raw = public_key_raw()
    return {
        "algorithm": "Ed25519",
        "scheme": SCHEME,
        "signed_message": "the artifact's sha256 as 64 lowercase hex ASCII characters",
        "signature_encoding": "base64 of the raw 64-byte signature",
        "key_id": key_id(raw),
        "public_key_pem": public_key_pem(),
        "public_key_raw_b64": base64.b64encode(raw).decode("ascii"),
    }
