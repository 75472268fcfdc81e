"""Stored files nothing references any more are removed (``collect_artifacts``), never a file a
row references, never one placed recently, and never one a concurrent upload of the same bytes
is about to reference."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
from django.core.management import call_command

from compression import services, storage
from compression.models import AIModel, ModelVersion

pytestmark = pytest.mark.django_db

DAY = 24 * 3600


def put(kind: str, data: bytes, *, age_s: float = 0, ext: str = ".onnx") -> storage.Stored:
    stored = storage.place(storage.receive(kind, io.BytesIO(data)), ext)
    if age_s:
        then = time.time() - age_s
        os.utime(stored.path, (then, then))
    return stored


def reference(stored: storage.Stored, version: int = 1) -> ModelVersion:
    model, _ = AIModel.objects.get_or_create(name="cam")
    return ModelVersion.objects.create(model=model, version=version, sha256=stored.sha256,
                                       size_bytes=stored.size_bytes, file=stored.relpath)


def test_only_old_unreferenced_entries_go(artifact_root):
    kept = put("models", b"referenced", age_s=3 * DAY)
    reference(kept)
    orphan = put("variants", b"orphan variant", age_s=3 * DAY)
    dataset = put("datasets", b"orphan dataset", age_s=3 * DAY, ext=".npz")
    fresh = put("variants", b"placed a minute ago", age_s=60)
    tmp = artifact_root / "models" / f"{storage.TEMP_PREFIX}upload"
    tmp.write_bytes(b"an upload in progress")
    work = storage.work_dir("job-1", 1) / "out.onnx"
    work.write_bytes(b"engine scratch")

    dry = services.collect_artifacts(grace_s=DAY, dry_run=True)
    assert sorted(c.relpath for c in dry) == sorted([orphan.relpath, dataset.relpath])
    assert orphan.path.exists()  # a dry run removes nothing

    removed = services.collect_artifacts(grace_s=DAY)
    assert sorted((c.relpath, c.size_bytes) for c in removed) == sorted(
        [(orphan.relpath, len(b"orphan variant")), (dataset.relpath, len(b"orphan dataset"))])
    assert not orphan.path.exists() and not dataset.path.exists()
    assert kept.path.exists() and fresh.path.exists() and tmp.exists() and work.exists()
    assert services.collect_artifacts(grace_s=DAY) == []


def test_a_zip_model_directory_is_one_entry(artifact_root):
    def tree(name: str) -> str:
        d = storage.temp_dir("models")
        (d / "model.onnx").write_bytes(name.encode())
        (d / "model.onnx.data").write_bytes(b"weights" * 100)
        rel = storage.place_tree("models", d, name * 16)
        then = time.time() - 3 * DAY
        os.utime(storage.path_of(rel), (then, then))
        return rel

    used, unused = tree("ab12"), tree("cd34")
    model = AIModel.objects.create(name="zipped")
    ModelVersion.objects.create(model=model, version=1, sha256="ab12" * 16, size_bytes=1, file=f"{used}/model.onnx")
    [removed] = services.collect_artifacts(grace_s=DAY)
    assert removed.relpath == unused and removed.size_bytes == len(b"cd34") + 700
    assert storage.path_of(used).is_dir() and not storage.path_of(unused).exists()


def test_uploading_the_bytes_of_an_old_orphan_again_saves_it(artifact_root):
    old = put("models", b"same bytes", age_s=3 * DAY)
    again = put("models", b"same bytes")  # deduplicated onto the old file, which is touched
    assert again.relpath == old.relpath and time.time() - Path(again.path).stat().st_mtime < 60
    assert services.collect_artifacts(grace_s=DAY) == []
    assert again.path.exists()


def test_a_reference_that_appears_while_collecting_puts_the_entry_back(artifact_root):
    """The row of a concurrent upload commits after the entry was set aside: the second look at
    the database sees it and the file goes back where the row says."""
    stored = put("models", b"racing upload", age_s=3 * DAY)

    def still_unreferenced(relpath: str) -> bool:
        assert relpath == stored.relpath and not stored.path.exists()  # set aside at this point
        reference(stored)  # the concurrent upload commits now
        return not ModelVersion.objects.filter(file=relpath).exists()

    assert storage.collect(set(), grace_s=DAY, still_unreferenced=still_unreferenced) == []
    assert stored.path.read_bytes() == b"racing upload"
    assert not [p for p in (artifact_root / "models").iterdir() if p.name.startswith(storage.GC_PREFIX)]


def test_command_reports_what_it_removes(artifact_root, capsys):
    orphan = put("variants", b"x" * 10, age_s=3 * DAY)
    call_command("collect_artifacts", "--dry-run", "--grace-hours", "1")
    out = capsys.readouterr().out
    assert f"would remove {orphan.relpath} (10 bytes)" in out and "would free 10 bytes" in out
    assert orphan.path.exists()
    call_command("collect_artifacts")
    assert "1 unreferenced entry, freed 10 bytes" in capsys.readouterr().out
    assert not orphan.path.exists()
