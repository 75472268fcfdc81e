"""Model registry: uploads are validated, content-addressed and registered with a verified,
signed ``original`` variant; anything invalid is refused with the checker's words and leaves no
file and no row behind."""

from __future__ import annotations

import hashlib
import io
import zipfile

import numpy as np
import onnx
import pytest

from compression import signing, storage
from compression.models import AIModel, Dataset, ModelVersion, Variant
from fleet.models import AuditEvent
from tests.compression.conftest import upload, upload_dataset

pytestmark = pytest.mark.django_db


def _stored_files(root) -> list:
    return sorted(p for p in root.rglob("*") if p.is_file() and "keys" not in p.parts)


def test_upload_valid_model(operator_api, registered, model_files, artifact_root):
    raw = model_files["mlp"].read_bytes()
    resp = upload(operator_api, "digits", model_files["mlp"], notes="first")
    assert resp.status_code == 201, resp.content
    body = resp.json()
    sha = hashlib.sha256(raw).hexdigest()
    assert body["version"] == 1 and body["sha256"] == sha and body["size_bytes"] == len(raw)

    meta = body["metadata"]
    assert meta["opset"] == 17 and meta["ir_version"] == 8
    assert meta["producer"] == "edgefleet-tests"
    assert meta["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 64]}]
    assert meta["outputs"][0]["shape"] == ["N", 10]
    assert meta["parameter_count"] == 64 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
    assert meta["op_histogram"]["Gemm"] == 3 and meta["control_flow_ops"] == []

    # Content-addressed file, byte for byte.
    version = ModelVersion.objects.get(pk=body["id"])
    assert version.file == f"models/{sha[:2]}/{sha}.onnx"
    assert (artifact_root / version.file).read_bytes() == raw

    # The original variant: accepted, measured, signed; the signature verifies.
    original = body["original_variant"]
    assert original["recipe"] == "original" and original["status"] == "accepted"
    assert original["deployable"] and original["sha256"] == sha
    assert original["latency_ms"]["p50"] > 0
    variant = Variant.objects.get(pk=original["id"])
    key = operator_api.get("/api/v1/agent/signing-key").json()
    assert signing.verify(sha, variant.signature, key["public_key_pem"])
    assert signing.verify(sha, variant.signature, key["public_key_raw_b64"])
    assert not signing.verify("0" * 64, variant.signature, key["public_key_pem"])
    assert variant.lineage["onnxruntime"] and "cpu_flags" in variant.lineage
    assert AuditEvent.objects.filter(action="model.version.upload").count() == 1

    # The variant's detail and the registry views agree.
    detail = operator_api.get(f"/api/v1/variants/{variant.pk}/").json()
    assert detail["deployable"] and detail["model"] == "digits" and detail["version"] == 1
    listed = operator_api.get("/api/v1/models/digits/").json()
    assert listed["versions"][0]["sha256"] == sha


def test_same_file_twice_is_a_conflict(operator_api, mlp_version, model_files):
    resp = upload(operator_api, "digits", model_files["mlp"])
    assert resp.status_code == 409
    assert resp.json()["version_id"] == mlp_version["id"]
    assert ModelVersion.objects.count() == 1


@pytest.mark.parametrize(
    "content, name, message",
    [
        (b"this is not a model at all", "model.onnx", "not"),
        (b"", "empty.onnx", "empty"),
        (None, "truncated.onnx", "truncated"),
        (b"\x00" * 10, "model.bin", "neither an .onnx"),
    ],
)
def test_invalid_upload_is_refused_and_leaves_nothing(
    operator_api, registered, model_files, artifact_root, content, name, message
):
    if content is None:
        raw = model_files["mlp"].read_bytes()
        content = raw[: len(raw) // 2]
    resp = upload(operator_api, "digits", content, name=name)
    assert resp.status_code == 400, resp.content
    assert message in resp.json()["detail"]
    assert ModelVersion.objects.count() == 0 and Variant.objects.count() == 0
    assert _stored_files(artifact_root) == []
    assert storage.temporary_entries() == []


def test_checker_failure_reports_the_checker_message(operator_api, registered, artifact_root):
    from onnx import TensorProto, helper

    # Parses as ONNX, but the node's input does not exist: the full checker refuses it.
    graph = helper.make_graph(
        [helper.make_node("Relu", ["missing"], ["y"])],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    resp = upload(operator_api, "digits", model.SerializeToString(), name="bad.onnx")
    assert resp.status_code == 400
    detail = resp.json()["detail"]
    assert "bad.onnx fails the ONNX checker" in detail and "missing" in detail
    assert _stored_files(artifact_root) == []


def test_size_limit_gives_413(operator_api, registered, model_files, settings, artifact_root):
    settings.MAX_MODEL_UPLOAD_BYTES = 1000
    resp = upload(operator_api, "digits", model_files["mlp"])
    assert resp.status_code == 413
    assert "limit is 1000 bytes" in resp.json()["detail"]
    assert "EDGEFLEET_MAX_MODEL_UPLOAD_BYTES" in resp.json()["detail"]
    assert _stored_files(artifact_root) == [] and ModelVersion.objects.count() == 0


def test_size_limit_while_streaming(registered, model_files, settings, artifact_root, operator):
    """The stream is cut at the limit even when Content-Length did not give it away."""
    from compression import services

    settings.MAX_MODEL_UPLOAD_BYTES = 1000
    with pytest.raises(services.TooLarge):
        services.add_version(operator, AIModel.objects.get(name="digits"),
                             io.BytesIO(model_files["mlp"].read_bytes()), filename="m.onnx")
    assert _stored_files(artifact_root) == [] and storage.temporary_entries() == []


def test_zip_with_external_data(operator_api, registered, model_files, tmp_path, artifact_root):
    model = onnx.load(str(model_files["mlp"]))
    folder = tmp_path / "ext"
    folder.mkdir()
    onnx.save_model(model, str(folder / "mlp.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="mlp.weights", size_threshold=0)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(folder / "mlp.onnx", "mlp/mlp.onnx")
        zf.write(folder / "mlp.weights", "mlp/mlp.weights")
    resp = upload(operator_api, "digits", archive.getvalue(), name="mlp.zip")
    assert resp.status_code == 201, resp.content
    body = resp.json()
    assert body["metadata"]["external_data"] is True and body["metadata"]["format"] == "zip"
    version = ModelVersion.objects.get(pk=body["id"])
    assert (artifact_root / version.file).name == "mlp.onnx"
    assert (artifact_root / version.file).with_name("mlp.weights").is_file()
    # The deployable original is one self-contained file, signed.
    original = Variant.objects.get(source=version, recipe="original")
    assert original.deployable and original.file.startswith("variants/")
    onnx.checker.check_model(str(artifact_root / original.file), full_check=True)
    assert storage.temporary_entries() == []


def test_zip_without_a_model_is_refused(operator_api, registered, artifact_root):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", "hello")
    resp = upload(operator_api, "digits", archive.getvalue(), name="x.zip")
    assert resp.status_code == 400 and "exactly one .onnx" in resp.json()["detail"]
    assert _stored_files(artifact_root) == [] and storage.temporary_entries() == []


def test_symbolic_dims_keep_the_original_verified_without_latency(
    operator_api, registered, model_files
):
    resp = upload(operator_api, "digits", model_files["dynamic"])
    assert resp.status_code == 201, resp.content
    original = resp.json()["original_variant"]
    assert original["status"] == "accepted" and original["latency_ms"] == {}
    assert "not run" in original["reason"] and "features" in original["reason"]
    assert resp.json()["metadata"]["inputs"][0]["shape"] == ["N", "features"]


def test_dataset_upload_and_validation(operator_api, mlp_version, artifact_root):
    rng = np.random.default_rng(0)
    good = {"x": rng.random((20, 1, 64), dtype=np.float32), "labels": np.arange(20) % 10}
    resp = upload_dataset(operator_api, "digits", good, name="digits.npz")
    assert resp.status_code == 201, resp.content
    body = resp.json()
    assert body["samples"] == 20 and body["has_labels"] is True and body["name"] == "digits"
    assert (artifact_root / Dataset.objects.get(pk=body["id"]).file).is_file()

    wrong_shape = upload_dataset(operator_api, "digits", {"x": rng.random((20, 1, 63))})
    assert wrong_shape.status_code == 400
    detail = wrong_shape.json()["detail"]
    assert "'x'" in detail and "[n, N, 64]" in detail

    wrong_name = upload_dataset(operator_api, "digits", {"image": rng.random((20, 1, 64))})
    assert wrong_name.status_code == 400
    assert "missing array(s) ['x']" in wrong_name.json()["detail"]

    not_npz = operator_api.post("/api/v1/models/digits/datasets/",
                                {"file": io.BytesIO(b"abc")}, format="multipart")
    assert not_npz.status_code == 400
    assert Dataset.objects.count() == 1
    assert storage.temporary_entries() == []


def test_model_by_name_or_id_and_unknown(viewer_api, mlp_version, registered):
    assert viewer_api.get(f"/api/v1/models/{registered['id']}/versions/").json()[0]["version"] == 1
    assert viewer_api.get("/api/v1/models/digits/versions/").status_code == 200
    assert viewer_api.get("/api/v1/models/nope/").status_code == 404


def test_signing_key_is_public_and_stable(anonymous_api, artifact_root):
    first = anonymous_api.get("/api/v1/agent/signing-key")
    assert first.status_code == 200
    body = first.json()
    assert body["algorithm"] == "Ed25519" and body["public_key_pem"].startswith("-----BEGIN PUBLIC KEY")
    assert anonymous_api.get("/api/v1/agent/signing-key").json() == body
    key_file = artifact_root / "keys" / signing.KEY_FILE
    assert key_file.stat().st_mode & 0o777 == 0o600
