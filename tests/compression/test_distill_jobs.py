"""Distillation through the server: the operator uploads a student architecture as a model
version and names it in the job; the server, never the client, turns that into a file path."""

import io

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compression import services
from compression.models import CompressionJob, Variant
from compression.storage import path_of
from tests.compression.conftest import FAST, upload, upload_dataset
from tests.compression.engine.models import digits_data

pytest.importorskip("torch")
pytestmark = pytest.mark.django_db


def _student_bytes(hidden: int = 32) -> bytes:
    """A small untrained MLP with the teacher's signature (x: [N, 64] -> logits: [N, 10])."""
    rng = np.random.default_rng(7)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.1, (64, hidden)).astype(np.float32), "w1"),
        numpy_helper.from_array(np.zeros(hidden, np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.1, (hidden, 10)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.zeros(10, np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["o"]),
        helper.make_node("Add", ["o", "b2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "student", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    buffer = io.BytesIO()
    onnx.save(model, buffer)
    return buffer.getvalue()


def _job(client, version_id, **body):
    return client.post("/api/v1/jobs/", {"version": version_id, **body}, format="json")


@pytest.fixture
def no_enqueue(monkeypatch):
    monkeypatch.setattr("compression.tasks.run_job.delay", lambda job_id: None)


def test_uploaded_student_is_trained_and_keeps_the_teacher_signature(
    operator_api, mlp_version, no_enqueue
):
    operator_api.post("/api/v1/models/", {"name": "digits-student"})
    student = upload(operator_api, "digits-student", _student_bytes(), name="student.onnx").json()
    X_train, X_test, y_train, y_test = digits_data()
    X, y = np.concatenate([X_train, X_test]), np.concatenate([y_train, y_test])
    dataset = upload_dataset(operator_api, "digits", {"x": X[:, None, :], "labels": y}).json()

    job = _job(operator_api, mlp_version["id"], recipe="distill", dataset=dataset["id"],
               params={"student_version": student["id"], "epochs": 40, "seed": 0},
               constraints={"accuracy_drop_max": 0.05}, options={**FAST, "evaluation_samples": 300})
    assert job.status_code == 201, job.content
    assert services.run_job(job.json()["id"]) == "succeeded", CompressionJob.objects.get().error

    variant = Variant.objects.get(job_id=job.json()["id"], recipe="distill")
    assert variant.status == "accepted", variant.reason
    trained = onnx.load(str(path_of(variant.file)))
    assert [i.name for i in trained.graph.input] == ["x"] and [o.name for o in trained.graph.output] == ["logits"]
    assert variant.fidelity["accuracy"] >= 0.9, variant.fidelity
    assert variant.params.get("student_path", "").endswith(".onnx")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"student_path": "/etc/passwd"}, "student_path is not accepted here"),
        ({"student_version": "00000000-0000-0000-0000-000000000000"}, "is not an uploaded model version"),
        ({"student_version": "not-a-uuid"}, "is not an uploaded model version"),
    ],
)
def test_students_are_named_by_version_never_by_path(operator_api, mlp_version, no_enqueue, params, message):
    resp = _job(operator_api, mlp_version["id"], recipe="distill", params=params)
    assert resp.status_code == 400
    assert message in resp.json()["detail"]


def test_student_version_needs_a_distill_step(operator_api, mlp_version, no_enqueue):
    resp = _job(operator_api, mlp_version["id"], recipe="int8-dynamic",
                params={"student_version": mlp_version["id"]})
    assert resp.status_code == 400 and "distill step" in resp.json()["detail"]
