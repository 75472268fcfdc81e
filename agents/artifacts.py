"""Artifact download and verification for deployments (stdlib only; ``cryptography`` optional).

Downloads stream to ``<downloads>/<sha256>.part`` in 256 KiB pieces (memory stays flat whatever
the size). An interrupted download resumes with ``Range: bytes=<have>-`` and ``If-Range: "<sha>"``
(the server answers 206 and we append, or 200 and we start over). The ``.part`` file is named by
the expected digest, so a partial file can never be mixed with another artifact's bytes. An
optional bandwidth limit sleeps between pieces.

Verification: the file's sha256 must equal the one in the desired state, and the Ed25519
signature over that digest (scheme ``ed25519-sha256hex-v1``, see compression/signing.py) must
verify with the server's public key. The signature check needs the ``cryptography`` package; when
it is missing the model is refused unless ``deploy_allow_unverified`` is set
(``EDGEFLEET_AGENT_DEPLOY_ALLOW_UNVERIFIED=true``).

Memory: the daemon imports this module, so ``hashlib`` (OpenSSL's libcrypto) and ``base64`` are
imported inside the functions that need them, not at the top.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

from agents.client import USER_AGENT, parse_server_url

PIECE = 256 * 1024


class DownloadError(Exception):
    """The artifact could not be fetched (network or HTTP); the ``.part`` file is kept."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class VerificationError(Exception):
    """The artifact's digest or signature is wrong (or cannot be checked)."""


def _connect(server: str, timeout: float, ca_file: str | None):
    scheme, host, port, base = parse_server_url(server)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
        if scheme == "https":
            import ssl

            sock = ssl.create_default_context(cafile=ca_file or None).wrap_socket(sock, server_hostname=host)
    except OSError as exc:
        raise DownloadError(f"cannot connect to {server}: {exc}") from None
    return sock, host, port, base


def _read_head(rfile) -> tuple[int, dict]:
    line = rfile.readline(65537)
    parts = line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise DownloadError(f"not an HTTP response: {line[:60]!r}")
    headers: dict[str, str] = {}
    while True:
        line = rfile.readline(65537)
        if not line:
            raise DownloadError("connection closed in the middle of the headers")
        if line in (b"\r\n", b"\n"):
            return int(parts[1]), headers
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()


def download(server: str, url_path: str, token: str, part_path: str, *, sha256: str, size: int | None,
             timeout: float = 30.0, ca_file: str | None = None, rate_limit_bps: int = 0,
             progress=None, stop=None) -> str:
    """Fetch ``url_path`` into ``part_path`` (resuming what is there); returns ``part_path``
    once the file has ``size`` bytes. ``progress(done, total)`` is called now and then;
    ``stop()`` returning True aborts (the partial file stays for next time)."""
    have = os.path.getsize(part_path) if os.path.exists(part_path) else 0
    if size is not None and have > size:
        os.remove(part_path)
        have = 0
    if size is not None and have == size:
        return part_path
    sock, host, port, base = _connect(server, timeout, ca_file)
    try:
        head = [f"GET {base}{url_path} HTTP/1.1", f"Host: {host}:{port}", f"User-Agent: {USER_AGENT}",
                f"Authorization: Bearer {token}", "Accept-Encoding: identity", "Connection: close"]
        if have:
            head += [f"Range: bytes={have}-", f'If-Range: "{sha256}"']
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        rfile = sock.makefile("rb")
        status, headers = _read_head(rfile)
        if status == 416:
            # What we have cannot be continued: start afresh next time.
            with contextlib.suppress(FileNotFoundError):
                os.remove(part_path)
            raise DownloadError("range not satisfiable; restarting the download", status)
        if status not in (200, 206):
            body = rfile.read(2000).decode("utf-8", "replace")
            raise DownloadError(f"HTTP {status}: {body[:300]}", status)
        mode = "ab" if status == 206 else "wb"
        done = have if status == 206 else 0
        length = headers.get("content-length")
        remaining = int(length) if length is not None and length.isdigit() else None
        total = size if size is not None else (done + remaining if remaining is not None else None)
        started, sent_at = time.monotonic(), 0.0
        received = 0
        with open(part_path, mode) as out:
            while remaining is None or remaining > 0:
                want = PIECE if remaining is None else min(PIECE, remaining)
                chunk = rfile.read(want)
                if not chunk:
                    break
                out.write(chunk)
                done += len(chunk)
                received += len(chunk)
                if remaining is not None:
                    remaining -= len(chunk)
                if rate_limit_bps > 0:
                    ahead = received / rate_limit_bps - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
                now = time.monotonic()
                if progress is not None and now - sent_at >= 1.0:
                    sent_at = now
                    progress(done, total)
                if stop is not None and stop():
                    raise DownloadError("download interrupted")
            out.flush()
            os.fsync(out.fileno())
        if remaining:
            raise DownloadError(f"connection closed with {remaining} bytes to go")
        if size is not None and done != size:
            raise DownloadError(f"got {done} bytes, expected {size}")
        return part_path
    except OSError as exc:
        raise DownloadError(f"download failed: {exc}") from None
    finally:
        with contextlib.suppress(OSError):
            sock.close()


def file_sha256(path: str) -> str:
    import hashlib  # lazy: see the module's docstring

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def signature_checker_available() -> bool:
    try:
        import cryptography.hazmat.primitives.asymmetric.ed25519  # noqa: F401
    except ImportError:
        return False
    return True


def verify(path: str, *, sha256: str, signature: str, public_key_b64: str | None,
           allow_unverified: bool = False) -> str:
    """Check digest and signature; returns "verified" or "unverified" (allowed by config), or
    raises VerificationError."""
    actual = file_sha256(path)
    if actual != sha256:
        raise VerificationError(f"sha256 mismatch: got {actual}, expected {sha256}")
    if not signature_checker_available() or not public_key_b64:
        if allow_unverified:
            return "unverified"
        raise VerificationError(
            "cannot verify the signature (no `cryptography` package or no server key); refusing "
            "to install. Set deploy_allow_unverified = true (EDGEFLEET_AGENT_DEPLOY_ALLOW_UNVERIFIED=true) to accept digest-only checks."
        )
    import base64

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64))
        key.verify(base64.b64decode(signature, validate=True), sha256.encode("ascii"))
    except (InvalidSignature, ValueError) as exc:
        raise VerificationError(f"bad signature ({type(exc).__name__})") from None
    return "verified"
