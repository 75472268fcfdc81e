"""The agent's model directory and child-process check, without a server."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest

from agents import artifacts
from agents.models_job import ModelsDir, run_check
from tests.fleet.deploy_helpers import broken_onnx_bytes, onnx_bytes


def put(models: ModelsDir, model: str, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    part = models.part_path(sha)
    with open(part, "wb") as fh:
        fh.write(data)
    models.adopt(model, part, sha)
    return sha


def test_swap_is_a_symlink_replace_keeping_one_previous_version(tmp_path):
    models = ModelsDir(str(tmp_path))
    a, b, c = (put(models, "digits", onnx_bytes(t)) for t in "abc")
    models.swap("digits", a)
    models.swap("digits", b)
    assert models.current_sha("digits") == b and models.current_sha("digits", "previous") == a
    assert os.path.exists(models.version_path("digits", a))
    assert not os.path.exists(models.version_path("digits", c))  # pruned: neither current nor previous
    models.swap("digits", a)  # instant rollback
    assert models.current_sha("digits") == a
    assert os.path.islink(os.path.join(tmp_path, "digits", "current"))


def test_unsafe_model_names_are_refused(tmp_path):
    with pytest.raises(ValueError):
        ModelsDir(str(tmp_path)).model_dir("../etc")


def test_check_passes_for_the_model_and_fails_for_a_different_one(tmp_path):
    import numpy as np
    import onnxruntime as ort

    from fleet.healthchecks import pack
    from tests.compression.engine.models import digits_data

    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    good.write_bytes(onnx_bytes())
    bad.write_bytes(broken_onnx_bytes())
    x = digits_data()[1][:3].reshape(3, 1, 64)
    session = ort.InferenceSession(str(good), providers=["CPUExecutionProvider"])
    outs = np.stack([session.run(None, {"x": x[i]})[0] for i in range(3)])
    health = {"inputs": pack({"x": x}), "outputs": pack({"logits": outs}), "samples": 3, "min_cosine": 0.99}
    ok = run_check(str(good), health, timeout=120)
    assert ok["ok"] and ok["cosine_min"] > 0.999 and ok["p50_ms"] > 0 and ok["peak_rss_bytes"] > 0
    refused = run_check(str(bad), health, timeout=120)
    assert not refused["ok"] and "health check failed" in refused["error"]


def test_a_file_that_is_not_a_model_fails_the_check_without_harming_the_agent(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    verdict = run_check(str(junk), None, timeout=120)
    assert not verdict["ok"] and "cannot load" in verdict["error"]


def test_verification_needs_the_digest_and_the_signature(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pub = base64.b64encode(raw).decode()
    path = tmp_path / "m.onnx"
    path.write_bytes(b"model bytes")
    sha = hashlib.sha256(b"model bytes").hexdigest()
    sig = base64.b64encode(key.sign(sha.encode())).decode()
    assert artifacts.verify(str(path), sha256=sha, signature=sig, public_key_b64=pub) == "verified"
    with pytest.raises(artifacts.VerificationError, match="sha256 mismatch"):
        artifacts.verify(str(path), sha256="0" * 64, signature=sig, public_key_b64=pub)
    other = base64.b64encode(key.sign(b"x" * 64)).decode()
    with pytest.raises(artifacts.VerificationError, match="bad signature"):
        artifacts.verify(str(path), sha256=sha, signature=other, public_key_b64=pub)
    with pytest.raises(artifacts.VerificationError, match="cannot verify"):
        artifacts.verify(str(path), sha256=sha, signature=sig, public_key_b64=None)
    assert artifacts.verify(str(path), sha256=sha, signature=sig, public_key_b64=None,
                            allow_unverified=True) == "unverified"
