"""Knowledge distillation on scikit-learn's digits: real training runs with fixed seeds.

The teachers come from ``models.py`` (a 64-256-128-10 MLP and a two-Conv CNN on 1x8x8 images).
Students are trained on the 1437 training digits and early-stopped on the 360 held-out ones;
every accuracy asserted here is measured by running the written ONNX file in onnxruntime, not
taken from the recipe's own report. Tests that train need PyTorch (the ``distill`` extra) and
skip without it; the last test checks, in a child Python where torch cannot be imported, that
the recipe says how to install it while the rest of the engine keeps working.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compression.engine.base import Cancelled, RecipeContext, RecipeNotApplicable
from tests.compression.engine import models

REPO = Path(__file__).resolve().parents[3]
MLP_SHAPE = (-1, 64)
CNN_SHAPE = (-1, 1, 8, 8)


def _digits(shape: tuple[int, ...]):
    X_train, X_test, y_train, y_test = models.digits_data()
    # Stored as the dataset format has it: one batch of one per sample ([n, 1, ...]).
    return X_train.reshape(-1, 1, *shape[1:]), X_test.reshape(-1, 1, *shape[1:]), y_train, y_test


def _accuracy(path: Path, X: np.ndarray, y: np.ndarray, shape: tuple[int, ...]) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (scores,) = session.run(None, {session.get_inputs()[0].name: X.reshape(shape)})
    return float((scores.argmax(axis=1) == y).mean())


def _signature(model: onnx.ModelProto) -> list[tuple]:
    def describe(v: onnx.ValueInfoProto) -> tuple:
        dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        return v.name, v.type.tensor_type.elem_type, dims

    inits = {i.name for i in model.graph.initializer}
    return [describe(v) for v in model.graph.input if v.name not in inits] + [
        describe(v) for v in model.graph.output
    ]


def _distill(
    tmp_path: Path, teacher: onnx.ModelProto, shape, params: dict, name: str = "student", **kwargs
):
    from compression.engine import distill

    teacher_path = tmp_path / "teacher.onnx"
    onnx.save(teacher, str(teacher_path))
    X_train, X_test, y_train, y_test = _digits(shape)
    lines: list[str] = []
    fractions: list[float] = []
    ctx = RecipeContext(
        model_path=teacher_path,
        out_path=tmp_path / f"{name}.onnx",
        params=params,
        calibration={"x": X_train},
        calibration_labels=y_train,
        evaluation={"x": X_test},
        evaluation_labels=y_test,
        work_dir=tmp_path,
        log=lines.append,
        progress=fractions.append,
        **kwargs,
    )
    outcome = distill.apply(ctx)
    return outcome, lines, fractions


def _assert_student_like_teacher(outcome, teacher, shape, tmp_path: Path) -> tuple[float, float]:
    """Same signature, a checked float32 ONNX file, accuracy within 2 points of the teacher."""
    student = onnx.load(str(outcome.path))
    onnx.checker.check_model(student, full_check=True)
    assert _signature(student) == _signature(teacher)
    assert {i.data_type for i in student.graph.initializer} <= {
        TensorProto.FLOAT,
        TensorProto.INT64,
    }

    _, X_test, _, y_test = models.digits_data()
    teacher_path = tmp_path / "teacher.onnx"
    teacher_acc = _accuracy(teacher_path, X_test, y_test, shape)
    student_acc = _accuracy(outcome.path, X_test, y_test, shape)
    assert student_acc >= teacher_acc - 0.02, (student_acc, teacher_acc, outcome.extra)
    assert outcome.extra["heldout_accuracy"] == pytest.approx(student_acc, abs=1e-4)
    assert outcome.extra["teacher_heldout_accuracy"] == pytest.approx(teacher_acc, abs=1e-4)
    return student_acc, teacher_acc


def test_generated_mlp_student_is_8x_smaller_and_as_accurate(tmp_path):
    pytest.importorskip("torch")
    teacher = models.build_digits_mlp()

    outcome, lines, fractions = _distill(tmp_path, teacher, MLP_SHAPE, {"widths": [64], "seed": 0})

    _assert_student_like_teacher(outcome, teacher, MLP_SHAPE, tmp_path)
    extra = outcome.extra
    assert extra["student"] == "generated-mlp"
    assert extra["teacher_params"] == 50826
    assert extra["teacher_params"] >= 8 * extra["student_params"]
    assert extra["param_ratio"] >= 8
    assert extra["best_heldout_agreement"] >= 0.97
    assert 1 <= extra["best_epoch"] <= extra["epochs_run"] <= 100
    assert extra["training_seconds"] > 0
    assert outcome.params["architecture"] == "mlp"
    # One log line per epoch with its loss and held-out scores; progress rises to 1.
    epoch_lines = [line for line in lines if line.startswith("distill: epoch ")]
    assert len(epoch_lines) == extra["epochs_run"]
    assert "loss" in epoch_lines[0] and "accuracy" in epoch_lines[0]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_generated_cnn_student_is_8x_smaller_and_as_accurate(tmp_path):
    pytest.importorskip("torch")
    teacher = models.build_digits_cnn()

    outcome, _, _ = _distill(tmp_path, teacher, CNN_SHAPE, {"width_multiplier": 0.375})

    _assert_student_like_teacher(outcome, teacher, CNN_SHAPE, tmp_path)
    assert outcome.extra["student"] == "generated-cnn"
    assert outcome.extra["param_ratio"] >= 8
    ops = {n.op_type for n in onnx.load(str(outcome.path)).graph.node}
    assert {"Conv", "MaxPool", "Gemm"} <= ops


def _uploaded_student(path: Path, hidden: int = 32) -> Path:
    """What an operator might upload: a randomly initialised MatMul/Add MLP with its own names."""
    rng = np.random.default_rng(7)
    w0 = rng.normal(0, np.sqrt(2 / 64), (64, hidden)).astype(np.float32)
    w1 = rng.normal(0, np.sqrt(1 / hidden), (hidden, 10)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["pixels", "w0"], ["mm0"]),
            helper.make_node("Add", ["mm0", "b0"], ["h0"]),
            helper.make_node("Relu", ["h0"], ["a0"]),
            helper.make_node("MatMul", ["a0", "w1"], ["mm1"]),
            helper.make_node("Add", ["mm1", "b1"], ["scores"]),
        ],
        "uploaded_student",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 10])],
        [
            numpy_helper.from_array(w0, "w0"),
            numpy_helper.from_array(np.zeros(hidden, np.float32), "b0"),
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(np.zeros(10, np.float32), "b1"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_uploaded_student_is_trained_and_keeps_the_teacher_signature(tmp_path):
    pytest.importorskip("torch")
    teacher = models.build_digits_mlp()
    uploaded = _uploaded_student(tmp_path / "uploaded.onnx")
    untrained_acc = _accuracy(uploaded, *models.digits_data()[1::2], MLP_SHAPE)

    outcome, _, _ = _distill(tmp_path, teacher, MLP_SHAPE, {"student_path": str(uploaded)})

    student_acc, _ = _assert_student_like_teacher(outcome, teacher, MLP_SHAPE, tmp_path)
    assert untrained_acc < 0.5 < student_acc
    student = onnx.load(str(outcome.path))
    # The operator's graph, renamed to the teacher's input/output names, with trained values.
    assert [n.op_type for n in student.graph.node] == ["MatMul", "Add", "Relu", "MatMul", "Add"]
    assert opset(student) == 13
    before = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(uploaded)).graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in student.graph.initializer}
    assert before.keys() == after.keys()
    assert all(not np.array_equal(before[k], after[k]) for k in before)
    assert outcome.extra["student"] == "uploaded"
    assert outcome.extra["student_params"] == 64 * 32 + 32 + 32 * 10 + 10
    assert any("renamed" in note for note in outcome.notes)


def opset(model: onnx.ModelProto) -> int:
    return next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))


def test_same_seed_gives_the_same_student_bytes(tmp_path):
    pytest.importorskip("torch")
    teacher = models.build_digits_mlp()
    params = {"epochs": 3, "seed": 3}

    first, _, _ = _distill(tmp_path, teacher, MLP_SHAPE, params, name="first")
    second, _, _ = _distill(tmp_path, teacher, MLP_SHAPE, params, name="second")
    other, _, _ = _distill(tmp_path, teacher, MLP_SHAPE, {**params, "seed": 4}, name="other")

    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.path.read_bytes() != other.path.read_bytes()


def test_cancellation_stops_training(tmp_path):
    pytest.importorskip("torch")
    with pytest.raises(Cancelled):
        _distill(tmp_path, models.build_digits_mlp(), MLP_SHAPE, {}, cancelled=lambda: True)
    assert not (tmp_path / "student.onnx").exists()


def test_students_that_cannot_replace_the_teacher_are_refused(tmp_path):
    pytest.importorskip("torch")
    teacher = models.build_digits_mlp()
    wrong = onnx.load(str(_uploaded_student(tmp_path / "wrong.onnx")))
    wrong.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 7
    onnx.save(wrong, str(tmp_path / "wrong.onnx"))
    with pytest.raises(RecipeNotApplicable, match="does not match the teacher"):
        _distill(tmp_path, teacher, MLP_SHAPE, {"student_path": str(tmp_path / "wrong.onnx")})

    exotic = onnx.load(str(_uploaded_student(tmp_path / "exotic.onnx")))
    exotic.graph.node[2].op_type = "Mish"
    onnx.save(exotic, str(tmp_path / "exotic.onnx"))
    with pytest.raises(RecipeNotApplicable, match="Mish"):
        _distill(tmp_path, teacher, MLP_SHAPE, {"student_path": str(tmp_path / "exotic.onnx")})

    with pytest.raises(RecipeNotApplicable, match="cnn"):
        _distill(tmp_path, teacher, MLP_SHAPE, {"architecture": "cnn"})


NO_TORCH_CHILD = textwrap.dedent(
    """
    import importlib.abc, json, sys
    from pathlib import Path

    class NoTorch(importlib.abc.MetaPathFinder):
        # What a machine without the distill extra looks like to Python.
        def find_spec(self, name, path, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, NoTorch())
    import numpy as np
    import compression.engine
    from compression.engine import distill
    from compression.engine.base import MissingDependency, RecipeContext
    from compression.engine.pipeline import compress

    teacher, dataset, out = sys.argv[1:4]
    result = {"torch_imported": "torch" in sys.modules}
    try:
        distill.apply(RecipeContext(model_path=Path(teacher), out_path=Path(out) / "s.onnx",
                                    calibration={"x": np.zeros((4, 1, 64), np.float32)}))
    except MissingDependency as exc:
        result["apply_error"] = str(exc)
    report = compress(teacher, "int8-dynamic", dataset=dataset, out_dir=out,
                      options={"latency_runs": 5, "latency_warmup": 1})
    result["int8"] = [(v.recipe, v.status, v.size_bytes) for v in report.variants]
    report = compress(teacher, "distill+int8-dynamic", dataset=dataset, out_dir=out,
                      options={"latency_runs": 5, "latency_warmup": 1})
    result["chain"] = [(v.recipe, v.status, v.reason) for v in report.variants]
    print(json.dumps(result))
    """
)


def test_without_torch_distill_says_how_to_install_and_the_engine_still_works(tmp_path):
    teacher = tmp_path / "teacher.onnx"
    models.build_digits_mlp(path=teacher)
    _, X_test, _, y_test = models.digits_data()
    dataset = models.dataset_npz(tmp_path / "digits.npz", X_test, y_test)

    child = subprocess.run(
        [sys.executable, "-c", NO_TORCH_CHILD, str(teacher), str(dataset), str(tmp_path / "out")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout.strip().splitlines()[-1])

    assert result["torch_imported"] is False
    assert "pip install 'edgefleet[distill]'" in result["apply_error"]
    assert "PyTorch" in result["apply_error"]
    [(recipe, status, size)] = result["int8"]
    assert recipe == "int8-dynamic" and status in ("accepted", "rejected") and size > 0
    [(recipe, status, reason)] = result["chain"]
    assert status == "failed" and "edgefleet[distill]" in reason
