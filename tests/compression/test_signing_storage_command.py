"""The signing key (created once, even under a race), content-addressed storage, and the
``manage.py compress`` wrapper around the engine's command line."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from contextlib import redirect_stdout

import pytest
from django.core.management import get_commands, load_command_class

from compression import signing, storage


def test_key_creation_race_yields_one_key(artifact_root):
    keys, barrier = [], threading.Barrier(8)

    def first_use():
        barrier.wait()
        signing._create_key(signing.key_path())  # every thread tries to create it
        keys.append(signing.key_path().read_bytes())

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1
    assert [p.name for p in (artifact_root / "keys").iterdir()] == [signing.KEY_FILE]


def test_signature_scheme_is_over_the_hex_digest(artifact_root, tmp_path):
    path = tmp_path / "artifact.bin"
    path.write_bytes(b"model bytes")
    sha = hashlib.sha256(b"model bytes").hexdigest()
    signature = signing.sign(sha)
    # Exactly what an agent does with the published raw key and nothing from this package:
    import base64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    raw = base64.b64decode(signing.published()["public_key_raw_b64"])
    Ed25519PublicKey.from_public_bytes(raw).verify(base64.b64decode(signature), sha.encode("ascii"))
    assert signing.verify_file(path, sha, signature, signing.public_key_pem())
    assert not signing.verify_file(path, "a" * 64, signature, signing.public_key_pem())
    with pytest.raises(ValueError):
        signing.message(sha.upper())


def test_storage_is_content_addressed_and_atomic(artifact_root):
    pending = storage.receive("models", io.BytesIO(b"abc" * 1000))
    assert pending.path.name.startswith(".tmp-") and pending.path.parent == artifact_root / "models"
    stored = storage.place(pending, ".onnx")
    sha = hashlib.sha256(b"abc" * 1000).hexdigest()
    assert stored.relpath == f"models/{sha[:2]}/{sha}.onnx" and stored.path.read_bytes() == b"abc" * 1000
    again = storage.place(storage.receive("models", [b"abc" * 500, b"abc" * 500]), ".onnx")
    assert again == stored and storage.temporary_entries() == []
    with pytest.raises(storage.TooLarge):
        storage.receive("models", io.BytesIO(b"x" * 100), limit=10)
    assert storage.temporary_entries() == []
    with pytest.raises(ValueError):
        storage.path_of("../outside")


def test_compress_command_passes_arguments_to_the_engine(model_files, tmp_path, capsys):
    assert get_commands()["compress"] == "compression"
    command = load_command_class("compression", "compress")
    out = io.StringIO()
    argv = ["manage.py", "compress", str(model_files["mlp"]), "--recipe", "int8-dynamic",
            "--dataset", str(model_files["mlp_npz"]), "--out", str(tmp_path / "out"), "--json",
            "--quiet", "--latency-runs", "20"]
    with redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        command.run_from_argv(argv)
    doc = json.loads(out.getvalue())
    assert doc["variants"][0]["recipe"] == "int8-dynamic"
    assert exit_info.value.code in (0, 1)  # 1 only if this host judged it slower

    with pytest.raises(SystemExit) as help_exit:
        command.run_from_argv(["manage.py", "compress", "--help"])
    assert help_exit.value.code == 0
    helptext = capsys.readouterr().out
    for option in ("--recipe", "--dataset", "--input-shape", "--out", "--json"):
        assert option in helptext
