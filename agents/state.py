"""Files in the state directory: credentials, the status file, the run lock.

    STATE_DIR/                 mode 0700
      credentials.json         mode 0600  server, device id, device token, status, server config
      buffer.sqlite3 (+ -wal)  mode 0600  samples not yet acknowledged (agents.buffer)
      status.json              mode 0644  what the running daemon knows, for `edgefleet-agent status`
      inventory.json           mode 0600  the inventory last accepted by the server
      agent.lock                          held (flock) by the running daemon

Every file is replaced atomically (write to a temporary name, fsync, ``os.replace``), so a reader
never sees half a file and a power cut leaves the old or the new version.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time

CREDENTIALS = "credentials.json"
STATUS = "status.json"
INVENTORY = "inventory.json"
BUFFER = "buffer.sqlite3"
LOCK = "agent.lock"


class StateError(RuntimeError):
    """The state directory is unusable or a file in it is corrupt."""


def ensure_state_dir(path: str) -> str:
    """Create the state directory (mode 0700) if needed; refuse one others can write to."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        # The directory holds the device token: nobody else needs to look inside.
        os.chmod(path, 0o700)
    return path


def write_json_atomic(path: str, data: object, mode: int = 0o600) -> None:
    """Write ``data`` as JSON to ``path`` atomically with the given file mode."""
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; we want exactly this mode
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def read_json(path: str) -> dict | None:
    """The JSON object in ``path``, or None when the file does not exist."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise StateError(f"{path} does not hold a JSON object")
    return data


# --- credentials --------------------------------------------------------------------------------


def credentials_path(state_dir: str) -> str:
    return os.path.join(state_dir, CREDENTIALS)


def load_credentials(state_dir: str) -> dict | None:
    """The enrollment record, or None before enrollment. Raises StateError when unusable."""
    creds = read_json(credentials_path(state_dir))
    if creds is None:
        return None
    missing = [k for k in ("server", "device_id", "device_token") if not creds.get(k)]
    if missing:
        raise StateError(f"{credentials_path(state_dir)} lacks {', '.join(missing)}; enroll again")
    return creds


def save_credentials(state_dir: str, creds: dict) -> str:
    """Store the enrollment record with mode 0600 in a 0700 directory."""
    ensure_state_dir(state_dir)
    path = credentials_path(state_dir)
    write_json_atomic(path, creds, mode=0o600)
    return path


# --- status file --------------------------------------------------------------------------------


def status_path(state_dir: str) -> str:
    return os.path.join(state_dir, STATUS)


def write_status(state_dir: str, status: dict) -> None:
    # Readable by others on purpose: it holds no secret, and monitoring may run as another user.
    write_json_atomic(status_path(state_dir), status, mode=0o644)


def read_status(state_dir: str) -> dict | None:
    try:
        return read_json(status_path(state_dir))
    except StateError:
        return None  # being replaced or damaged: the status command still prints the rest


# --- run lock -----------------------------------------------------------------------------------


class RunLock:
    """An exclusive ``flock`` on STATE_DIR/agent.lock: one daemon per state directory.

    The kernel drops the lock when the process dies, so a crash never leaves a stale lock.
    """

    def __init__(self, state_dir: str):
        self.path = os.path.join(state_dir, LOCK)
        self.fd: int | None = None

    def acquire(self, wait_s: float = 2.0) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # `status` takes a shared lock for an instant to see whether we run: wait it out.
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                os.close(fd)
                raise StateError(
                    f"another agent is already running with this state directory ({self.path})"
                ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def agent_running(state_dir: str) -> bool | None:
    """True when a daemon holds the lock, False when none does, None when we cannot tell."""
    path = os.path.join(state_dir, LOCK)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)
    return False


def iso(ts: float | None) -> str | None:
    """An epoch time as ISO 8601 UTC with a 'Z', for people (files keep the epoch seconds)."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
