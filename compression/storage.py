"""Content-addressed artifact storage under ``settings.ARTIFACT_ROOT``.

Layout (paths stored in the database are relative to ARTIFACT_ROOT)::

    models/ab/<sha256>.onnx          an uploaded single-file model
    models/ab/<sha256>/<name>.onnx   an uploaded zip: the model plus its external data files
    datasets/ab/<sha256>.npz         a dataset
    variants/ab/<sha256>.onnx        a compressed variant (or a single-file copy of an original)
    variants/.work/<job>/<attempt>/  the engine's scratch space for a running job
    keys/                            the server's signing key (compression.signing)

Every file is first written to a temporary name (``.tmp-*``) in its kind's directory, hashed
while it is written, fsynced, then moved into place with ``os.replace`` (same filesystem, so the
move is atomic): a reader never sees half a file under a final name, and a crash leaves at most a
``.tmp-*`` file that ``sweep_temporary`` removes later.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from django.conf import settings

CHUNK = 1 << 20
TEMP_PREFIX = ".tmp-"
KINDS = ("models", "datasets", "variants")


class TooLarge(Exception):
    """More bytes arrived than the limit allows (answered with 413)."""

    def __init__(self, limit: int):
        super().__init__(f"the file is larger than the limit of {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class Stored:
    """A file in its final, content-addressed place."""

    relpath: str
    sha256: str
    size_bytes: int

    @property
    def path(self) -> Path:
        return path_of(self.relpath)


@dataclass
class Pending:
    """A complete, fsynced file under a temporary name, not yet in its final place."""

    kind: str
    path: Path
    sha256: str
    size_bytes: int

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def root() -> Path:
    return Path(settings.ARTIFACT_ROOT)


def path_of(relpath: str) -> Path:
    """The absolute path of a stored artifact; refuses paths that would leave ARTIFACT_ROOT."""
    base = root().resolve()
    path = (base / relpath).resolve()
    if base != path and base not in path.parents:
        raise ValueError(f"artifact path {relpath!r} is outside ARTIFACT_ROOT")
    return path


def address(kind: str, sha256: str, ext: str = "") -> str:
    """``<kind>/<sha[:2]>/<sha><ext>``, relative to ARTIFACT_ROOT."""
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}")
    return f"{kind}/{sha256[:2]}/{sha256}{ext}"


def kind_dir(kind: str) -> Path:
    directory = root() / kind
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible (or needed) on every platform.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _chunks(source: BinaryIO | Iterable[bytes]) -> Iterator[bytes]:
    if hasattr(source, "chunks"):  # Django's UploadedFile
        yield from source.chunks(CHUNK)
    elif hasattr(source, "read"):
        while chunk := source.read(CHUNK):
            yield chunk
    else:
        yield from source


def receive(kind: str, source: BinaryIO | Iterable[bytes], *, limit: int | None = None) -> Pending:
    """Stream ``source`` into a temporary file of ``kind``, hashing as it goes; never holds more
    than one chunk in memory. Raises ``TooLarge`` (leaving nothing behind) past ``limit``."""
    directory = kind_dir(kind)
    tmp = directory / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
    digest = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "xb") as out:
            for chunk in _chunks(source):
                size += len(chunk)
                if limit is not None and size > limit:
                    raise TooLarge(limit)
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return Pending(kind, tmp, digest.hexdigest(), size)


def place(pending: Pending, ext: str = "") -> Stored:
    """Move a pending file to its content address. If the same content is already there, the
    pending copy is dropped (identical bytes, and the existing file may be in use)."""
    relpath = address(pending.kind, pending.sha256, ext)
    final = path_of(relpath)
    final.parent.mkdir(parents=True, exist_ok=True)
    if touch(relpath):  # the same bytes are there: keep them, marked as just placed (see collect)
        pending.discard()
    else:
        os.replace(pending.path, final)
        touch(relpath)
        _fsync_dir(final.parent)
    return Stored(relpath, pending.sha256, pending.size_bytes)


def touch(relpath: str) -> bool:
    """Mark a stored entry as placed now (its mtime), so :func:`collect` leaves it alone while the
    database row that will reference it is being written. False when it does not exist."""
    try:
        os.utime(path_of(relpath))
    except FileNotFoundError:
        return False
    return True


def adopt(kind: str, path: str | os.PathLike, ext: str = "") -> Stored:
    """Move an existing complete file (e.g. an engine output under ``variants/.work``) into
    content-addressed storage. Its sha256 is computed here, not trusted from the caller."""
    path = Path(path)
    if path.stat().st_dev != kind_dir(kind).stat().st_dev:  # a rename across filesystems is not atomic: copy, then place
        with open(path, "rb") as handle:
            pending = receive(kind, handle)
        path.unlink()
        return place(pending, ext)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
        os.fsync(handle.fileno())
    pending = Pending(kind, path, digest.hexdigest(), path.stat().st_size)
    return place(pending, ext)


def temp_dir(kind: str) -> Path:
    """A private temporary directory inside ``kind`` (same filesystem as the final place)."""
    return Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=kind_dir(kind)))


def place_tree(kind: str, directory: Path, sha256: str) -> str:
    """Move a whole directory (a model with external data) to ``<kind>/ab/<sha>/``; returns its
    relative path. An existing directory with the same address wins."""
    relpath = address(kind, sha256)
    final = path_of(relpath)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(directory, final)  # fails if final exists and is not empty: that is fine
        _fsync_dir(final.parent)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(directory, ignore_errors=True)
    if not touch(relpath):  # collected between the rename and now: the caller must retry
        raise FileNotFoundError(f"{relpath} was removed while it was placed")
    return relpath


def work_dir(job_id: str, attempt: int) -> Path:
    """The engine's scratch directory for one attempt of a job (under ``variants/.work``)."""
    directory = kind_dir("variants") / ".work" / str(job_id) / str(attempt)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def clear_work(job_id: str, *, keep_attempt: int | None = None) -> None:
    """Remove what earlier attempts of a job left (a killed worker); ``keep_attempt`` survives."""
    base = kind_dir("variants") / ".work" / str(job_id)
    if not base.exists():
        return
    for child in base.iterdir():
        if keep_attempt is None or child.name != str(keep_attempt):
            shutil.rmtree(child, ignore_errors=True)
    if keep_attempt is None:
        shutil.rmtree(base, ignore_errors=True)


def remove_work(job_id: str, attempt: int) -> None:
    """Remove one attempt's work directory, and the job's directory once it is empty."""
    base = kind_dir("variants") / ".work" / str(job_id)
    shutil.rmtree(base / str(attempt), ignore_errors=True)
    with contextlib.suppress(OSError):
        base.rmdir()


def sweep_temporary(max_age_s: float = 6 * 3600) -> int:
    """Remove ``.tmp-*`` files and directories older than ``max_age_s`` left by crashed
    processes; returns how many were removed. Safe to run at any time."""
    removed = 0
    cutoff = time.time() - max_age_s
    for kind in KINDS:
        directory = root() / kind
        if not directory.is_dir():
            continue
        for entry in directory.glob(f"{TEMP_PREFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                if entry.lstat().st_mtime < cutoff:
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink()
                    removed += 1
    return removed


def temporary_entries() -> list[Path]:
    """Every ``.tmp-*`` entry and job work directory currently present (for tests and checks)."""
    found: list[Path] = []
    for kind in KINDS:
        directory = root() / kind
        if directory.is_dir():
            found += list(directory.glob(f"{TEMP_PREFIX}*"))
    work = root() / "variants" / ".work"
    if work.is_dir():
        found += list(work.iterdir())
    return found


# --- garbage collection -------------------------------------------------------------------------

GC_PREFIX = f"{TEMP_PREFIX}gc-"


@dataclass(frozen=True)
class Collected:
    relpath: str  # the entry: <kind>/<ab>/<name>, a file or a directory
    size_bytes: int


def entry_of(relpath: str) -> str:
    """The stored entry a database path points into (a zip model's directory for its files)."""
    return "/".join(Path(relpath).parts[:3])


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file())
    return path.lstat().st_size


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def collect(referenced, *, grace_s: float = 24 * 3600, dry_run: bool = False,
            still_unreferenced=None) -> list[Collected]:
    """Remove the stored entries (``models/``, ``datasets/``, ``variants/``) that no database
    row references and that were last placed more than ``grace_s`` ago. ``referenced`` holds
    entries (:func:`entry_of`); ``still_unreferenced(relpath) -> bool`` is asked again, from the
    database, once the entry is out of the way. Returns what was (or, dry, would be) removed.

    Safe against a concurrent upload of the same bytes: an entry is first renamed away
    (atomically; a placement that comes after it writes a fresh copy), then its mtime is read
    again — a placement that touched it meanwhile makes it recent — and the database asked again;
    either puts it back. Only then is it deleted. Temporary files and job work directories are
    :func:`sweep_temporary`'s business and are not touched."""
    referenced = {entry_of(r) for r in referenced if r}
    cutoff = time.time() - grace_s
    out: list[Collected] = []
    for kind in KINDS:
        base = root() / kind
        if not base.is_dir():
            continue
        for shard in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for entry in sorted(shard.iterdir()):
                relpath = f"{kind}/{shard.name}/{entry.name}"
                if entry.name.startswith(".") or relpath in referenced:
                    continue
                try:
                    if entry.lstat().st_mtime >= cutoff:
                        continue
                    size = _size(entry)
                except FileNotFoundError:
                    continue
                if dry_run:
                    out.append(Collected(relpath, size))
                    continue
                # Aside in the kind's directory: a crash here leaves a .tmp- entry for sweep_temporary.
                aside = base / f"{GC_PREFIX}{uuid.uuid4().hex}-{entry.name}"
                try:
                    os.rename(entry, aside)
                except FileNotFoundError:
                    continue
                recent = aside.lstat().st_mtime >= cutoff
                if recent or (still_unreferenced is not None and not still_unreferenced(relpath)):
                    try:
                        os.rename(aside, entry)  # put back (a fresh copy placed meanwhile wins)
                    except OSError:
                        _remove(aside)
                    continue
                _remove(aside)
                out.append(Collected(relpath, size))
    return out
