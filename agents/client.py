"""A small JSON-over-HTTP(S) client for agent protocol v1.

Why not ``urllib.request``: it pulls in ``http.client``, ``email`` and ``ssl`` (about 7 MiB of
RSS, a third of the agent's budget) and closes the connection after every request. This client
speaks just the HTTP/1.1 the protocol needs on a plain socket, keeps the connection alive between
reports (one TLS handshake per burst, not per request), and imports ``ssl`` only when the server
URL is ``https``. Certificates are always verified (system CAs, or ``ca_file``).

Errors come in two kinds, so the daemon can decide what to do:

- :class:`TransportError`: no answer (DNS, refused, timeout, TLS failure, broken HTTP). Retry later.
- :class:`ApiError`: the server answered with a status outside 2xx. ``kind`` says what it means:
  ``pending`` (403, awaiting approval), ``disabled`` (403, an operator disabled it), ``gone``
  (401 token invalid or revoked, or 403 rejected/decommissioned), ``retry`` (408, 425, 429, 5xx;
  see ``retry_after``) or ``refused`` (any other 4xx: this request will never succeed as is).
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import sys
import zlib

from agents import __version__

API_PREFIX = "/api/v1/agent"
MAX_RESPONSE_BYTES = 16 * 1024**2
GZIP_MIN_BYTES = 1024
USER_AGENT = f"edgefleet-agent/{__version__} python/{sys.version_info[0]}.{sys.version_info[1]}"


class TransportError(ConnectionError):
    """The server could not be reached or did not answer with valid HTTP."""


class ApiError(Exception):
    """The server answered with an error status."""

    def __init__(self, method: str, path: str, status: int, headers: dict, body: bytes):
        self.status = status
        self.headers = headers
        self.body = body
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            data = {}
        self.data = data if isinstance(data, dict) else {"errors": data}
        detail = self.data.get("detail") or body[:300].decode("utf-8", "replace").strip()
        self.detail = str(detail) or f"HTTP {status}"
        self.device_status = self.data.get("status") if status == 403 else None
        super().__init__(f"{method} {path}: HTTP {status}: {self.detail}")

    @property
    def kind(self) -> str:
        if self.status == 401:
            return "gone"
        if self.status == 403 and self.device_status == "pending":
            return "pending"
        if self.status == 403 and self.device_status == "disabled":
            return "disabled"
        if self.status == 403 and self.device_status in ("rejected", "decommissioned"):
            return "gone"
        if self.status in (408, 425, 429) or self.status >= 500:
            return "retry"
        return "refused"

    @property
    def retry_after(self) -> float | None:
        """Seconds from a ``Retry-After: <seconds>`` header (the HTTP-date form is ignored)."""
        try:
            value = float(self.headers.get("retry-after", ""))
        except ValueError:
            return None
        return value if value >= 0 else None


class Response:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> dict:
        if not self.body:
            return {}
        try:
            data = json.loads(self.body)
        except ValueError as exc:
            raise TransportError(
                f"the server answered HTTP {self.status} with invalid JSON"
            ) from exc
        return data if isinstance(data, dict) else {"data": data}


def parse_server_url(url: str) -> tuple[str, str, int, str]:
    """``(scheme, host, port, base_path)`` of ``http[s]://host[:port][/prefix]``."""
    scheme, sep, rest = url.strip().partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https"):
        raise ValueError(f"server URL must start with http:// or https://, got {url!r}")
    hostport, _, path = rest.partition("/")
    path = path.split("?", 1)[0].split("#", 1)[0]
    if "@" in hostport:
        raise ValueError("server URL must not contain credentials")
    port_text = ""
    if hostport.startswith("["):  # IPv6 literal
        end = hostport.find("]")
        if end < 0:
            raise ValueError(f"bad IPv6 address in {url!r}")
        host, port_text = hostport[1:end], hostport[end + 1 :].lstrip(":")
    elif ":" in hostport:
        host, _, port_text = hostport.rpartition(":")
    else:
        host = hostport
    if not host:
        raise ValueError(f"server URL has no host: {url!r}")
    try:
        port = int(port_text) if port_text else (443 if scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"bad port in server URL {url!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"bad port in server URL {url!r}")
    base = "/" + path.strip("/") if path.strip("/") else ""
    return scheme, host, port, base


class _Unanswered(Exception):
    """The connection closed before a single byte of response: safe to retry on a new one."""


class AgentClient:
    """Agent protocol v1 against one server. Not thread-safe; one instance per daemon."""

    def __init__(
        self,
        server: str,
        token: str | None = None,
        ca_file: str | None = None,
        timeout: float = 10.0,
        gzip: bool = False,
    ):
        self.server = server.rstrip("/")
        self.scheme, self.host, self.port, self.base = parse_server_url(server)
        self.token = token
        self.ca_file = ca_file
        self.timeout = timeout
        self.gzip = gzip
        self._sock: socket.socket | None = None
        self._rfile = None
        self._ssl_context = None

    # --- protocol v1 ----------------------------------------------------------------------------

    def enroll(self, enrollment_token: str, name: str, fingerprint: str, inventory: dict) -> dict:
        """``POST /enroll`` (no device token) → ``{"device_id", "device_token", "status", "config"}``."""
        body = {
            "enrollment_token": enrollment_token,
            "name": name,
            "fingerprint": fingerprint,
            "inventory": inventory,
        }
        return self.request("POST", "/enroll", body, auth=False).json()

    def send_telemetry(self, body: str | bytes) -> dict:
        """``POST /telemetry`` with a pre-rendered body → ``{"acked_seq": n}``."""
        return self.request("POST", "/telemetry", body).json()

    def put_inventory(self, inventory: dict) -> dict:
        return self.request("PUT", "/inventory", inventory).json()

    # --- HTTP -----------------------------------------------------------------------------------

    def request(
        self, method: str, path: str, payload=None, auth: bool = True, headers: dict | None = None
    ) -> Response:
        """Send a request to ``API_PREFIX + path``; the response, or ApiError for non-2xx/304."""
        full_path = self.base + API_PREFIX + path
        if payload is None:
            data = b""
        elif isinstance(payload, bytes):
            data = payload
        elif isinstance(payload, str):
            data = payload.encode()
        else:
            data = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
        head = {
            "Host": self.host if self.port in (80, 443) else f"{self.host}:{self.port}",
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            "Accept-Encoding": "identity",
        }
        if auth:
            if not self.token:
                raise ValueError("this request needs a device token; enroll first")
            head["Authorization"] = f"Bearer {self.token}"
        if payload is not None:
            head["Content-Type"] = "application/json"
        gzipped = False
        if self.gzip and len(data) >= GZIP_MIN_BYTES:
            packer = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: gzip container
            data, gzipped = packer.compress(data) + packer.flush(), True
            head["Content-Encoding"] = "gzip"
        if payload is not None or method in ("POST", "PUT", "PATCH"):
            head["Content-Length"] = str(len(data))
        head.update(headers or {})
        status, resp_headers, body = self._exchange(method, full_path, head, data)
        if status == 415 and gzipped:
            # The server does not take gzip: say so once, then speak plainly from now on.
            self.gzip = False
            return self.request(method, path, payload, auth, headers)
        if 200 <= status < 300 or status == 304:
            return Response(status, resp_headers, body)
        raise ApiError(method, full_path, status, resp_headers, body)

    def _exchange(self, method: str, path: str, headers: dict, data: bytes):
        lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
        message = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data
        for attempt in (1, 2):
            reused = self._sock is not None
            if reused and self._is_stale():
                self.close()
                reused = False
            if self._sock is None:
                self._connect()
            try:
                self._sock.sendall(message)
                status, resp_headers, body, keep = self._read_response(method)
            except _Unanswered:
                self.close()
                if reused and attempt == 1:
                    continue  # the server had closed our idle connection: once more, afresh
                raise TransportError(
                    f"{self.server}: connection closed without an answer"
                ) from None
            except OSError as exc:
                self.close()
                if (
                    reused
                    and attempt == 1
                    and isinstance(exc, BrokenPipeError | ConnectionResetError)
                ):
                    continue
                raise TransportError(f"{self.server}: {_describe(exc)}") from None
            if not keep:
                self.close()
            return status, resp_headers, body
        raise TransportError(f"{self.server}: connection lost")  # pragma: no cover

    def _connect(self) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise TransportError(f"cannot connect to {self.server}: {_describe(exc)}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.scheme == "https":
                sock = self._tls_context().wrap_socket(sock, server_hostname=self.host)
        except OSError as exc:
            sock.close()
            raise TransportError(f"TLS with {self.server} failed: {_describe(exc)}") from None
        self._sock = sock
        self._rfile = sock.makefile("rb")

    def _tls_context(self):
        if self._ssl_context is None:
            import ssl  # only for https servers: it costs about 4 MiB of RSS

            self._ssl_context = ssl.create_default_context(cafile=self.ca_file or None)
        return self._ssl_context

    def _is_stale(self) -> bool:
        """An idle kept-alive connection is readable only if the server closed it (EOF)."""
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def _read_response(self, method: str):
        rfile = self._rfile
        line = rfile.readline(65537)
        if not line:
            raise _Unanswered
        while True:
            version, status = _parse_status_line(line)
            headers = _read_headers(rfile)
            if status >= 200 or status == 101:
                break
            line = rfile.readline(65537)  # 100 Continue and other interim answers
        connection = headers.get("connection", "").lower()
        keep = (version == "HTTP/1.1" and "close" not in connection) or "keep-alive" in connection
        if method == "HEAD" or status in (204, 304) or status < 200:
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = _read_chunked(rfile)
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise OSError("bad Content-Length in response") from None
            if length > MAX_RESPONSE_BYTES:
                raise OSError(f"response too large ({length} bytes)")
            body = rfile.read(length)
            if len(body) != length:
                raise OSError("connection closed in the middle of the response")
        else:
            body = rfile.read(MAX_RESPONSE_BYTES + 1)
            if len(body) > MAX_RESPONSE_BYTES:
                raise OSError("response too large")
            keep = False
        return status, headers, body, keep

    def close(self) -> None:
        for thing in (self._rfile, self._sock):
            if thing is not None:
                with contextlib.suppress(OSError):
                    thing.close()
        self._sock = self._rfile = None


def _parse_status_line(line: bytes) -> tuple[str, int]:
    parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise OSError(f"not an HTTP response: {line[:60]!r}")
    return parts[0], int(parts[1])


def _read_headers(rfile) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(200):
        line = rfile.readline(65537)
        if not line:
            raise OSError("connection closed in the middle of the headers")
        if line in (b"\r\n", b"\n"):
            return headers
        name, sep, value = line.decode("latin-1").partition(":")
        if sep:
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
    raise OSError("too many response headers")


def _read_chunked(rfile) -> bytes:
    chunks, total = [], 0
    while True:
        line = rfile.readline(1024)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise OSError("bad chunk in response") from None
        if size == 0:
            _read_headers(rfile)  # trailers
            return b"".join(chunks)
        total += size
        if total > MAX_RESPONSE_BYTES:
            raise OSError("response too large")
        chunk = rfile.read(size)
        if len(chunk) != size or rfile.readline(3) not in (b"\r\n", b"\n"):
            raise OSError("connection closed in the middle of the response")
        chunks.append(chunk)


def _describe(exc: OSError) -> str:
    name = type(exc).__name__
    if name == "SSLCertVerificationError":
        return (
            f"certificate verification failed ({getattr(exc, 'verify_message', exc)}); "
            "is ca_file set to the server's CA?"
        )
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host ({exc.strerror or exc})"
    return exc.strerror or str(exc) or name
