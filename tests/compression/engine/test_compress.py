"""``compress`` end to end: auto, the JSON contract, artifacts, constraints, the CLI."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from compression.engine import Cancelled, EngineError, compress
from compression.engine.cli import main
from tests.compression.engine.conftest import FAST

VARIANT_KEYS = {
    "recipe",
    "params",
    "status",
    "reason",
    "path",
    "size_bytes",
    "gzip_bytes",
    "sha256",
    "latency_ms",
    "fidelity",
}


@pytest.fixture(scope="module")
def auto_report(tmp_path_factory, mlp_path, mlp_dataset):
    out = tmp_path_factory.mktemp("auto")
    progress = []
    report = compress(
        mlp_path,
        "auto",
        dataset=mlp_dataset,
        out_dir=out,
        options=FAST,
        progress=lambda fraction, message: progress.append((fraction, message)),
    )
    return report, out, progress


def test_auto_evaluates_the_grid_and_recommends_the_smallest_accepted_variant(auto_report):
    report, _, _ = auto_report
    recipes = [v.recipe for v in report.variants]
    assert {"int8-dynamic", "int8-static", "int4-weight", "fp16"} <= set(recipes)
    accepted = [v for v in report.variants if v.status == "accepted"]
    assert accepted and report.recommended is not None
    best = report.variants[report.recommended]
    assert best.status == "accepted"
    assert best.size_bytes <= min(v.size_bytes for v in accepted) * 1.01
    assert best.recipe == "int4-weight"  # 4-bit weights are the smallest on an MLP
    assert "smallest accepted" in report.reason


def test_auto_flags_the_pareto_frontier_among_accepted_variants(auto_report):
    report, _, _ = auto_report
    front = [v for v in report.variants if v.pareto]
    assert front and all(v.status == "accepted" for v in front)
    assert report.variants[report.recommended].pareto
    for v in report.variants:
        if v.status == "accepted" and not v.pareto:
            assert any(
                f.size_bytes <= v.size_bytes
                and f.latency_ms["p50"] <= v.latency_ms["p50"]
                and f.fidelity["cosine_min"] >= v.fidelity["cosine_min"]
                for f in front
            )


def test_the_json_document_follows_the_contract(auto_report):
    report, _, _ = auto_report
    doc = json.loads(report.to_json())
    assert set(doc["model"]) >= {"path", "sha256", "size_bytes"}
    assert set(doc["baseline"]["latency_ms"]) == {"p50", "p90", "p99"}
    assert isinstance(doc["recommended"], int)
    for v in doc["variants"]:
        assert set(v) >= VARIANT_KEYS
        assert v["status"] in ("accepted", "rejected", "failed")
        assert set(v["fidelity"]) >= {"cosine_min", "max_abs_error", "top1_agreement", "accuracy"}
    assert doc["synthetic"] is False and len(doc["dataset"]["sha256"]) == 64
    assert doc["lineage"]["onnxruntime"] and "cpu_flags" in doc["lineage"]
    assert doc["elapsed_s"] > 0


def test_artifacts_are_content_addressed_and_no_scratch_is_left(auto_report):
    report, out, _ = auto_report
    for v in report.variants:
        if v.status == "accepted":
            path = Path(v.path)
            assert path.parent == out and path.name == f"{v.sha256}.onnx"
            assert hashlib.sha256(path.read_bytes()).hexdigest() == v.sha256
        elif v.path is not None:
            assert v.status == "rejected" and Path(v.path).name.startswith("rejected-")
    assert not [p for p in out.iterdir() if p.name.startswith(".work-")]


def test_progress_rises_from_zero_to_one(auto_report):
    _, _, progress = auto_report
    fractions = [f for f, _ in progress]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert fractions == sorted(fractions)


def test_constraints_nobody_meets_give_no_recommendation_and_say_why(
    tmp_path, mlp_path, mlp_dataset
):
    report = compress(
        mlp_path,
        "int8-dynamic",
        dataset=mlp_dataset,
        out_dir=tmp_path,
        options=FAST,
        constraints={"max_size_bytes": 1000},
    )
    assert report.recommended is None
    assert "none meets max size 1000 bytes" in report.reason
    assert report.variants[0].status == "accepted"


def test_without_a_dataset_fidelity_is_marked_synthetic(tmp_path, mlp_path):
    report = compress(mlp_path, "int8-dynamic", out_dir=tmp_path, options=FAST)
    assert report.to_dict()["synthetic"] is True
    assert any("synthetic" in note for note in report.notes)
    assert report.variants[0].fidelity["cosine_min"] > 0.9


def test_cancellation_stops_the_run_and_cleans_up(tmp_path, mlp_path, mlp_dataset):
    with pytest.raises(Cancelled):
        compress(
            mlp_path,
            "int8-dynamic",
            dataset=mlp_dataset,
            out_dir=tmp_path,
            options=FAST,
            cancelled=lambda: True,
        )
    assert list(tmp_path.iterdir()) == []


def test_bad_options_are_refused_before_any_work(tmp_path, mlp_path):
    with pytest.raises(EngineError, match="unknown engine option"):
        compress(mlp_path, "fp16", out_dir=tmp_path, options={"speed": "max"})
    with pytest.raises(EngineError, match="unknown constraint"):
        compress(mlp_path, "fp16", out_dir=tmp_path, constraints={"max_ram": 1})


def test_cli_json_prints_only_the_document(tmp_path, mlp_path, mlp_dataset, capsys):
    code = main(
        [
            str(mlp_path),
            "--recipe",
            "int8-dynamic",
            "--dataset",
            str(mlp_dataset),
            "--out",
            str(tmp_path),
            "--json",
            "--latency-runs",
            "20",
            "--tolerance-cosine",
            "0.99",
            "--param",
            "per_channel=false",
        ]
    )
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["variants"][0]["params"]["per_channel"] is False
    assert code in (0, 1)  # 1 only if int8 is slower than float on this host
    assert "%" in captured.err  # progress went to stderr


def test_cli_table_and_errors(tmp_path, mlp_path, mlp_dataset, capsys):
    main(
        [
            str(mlp_path),
            "--recipe",
            "fp16",
            "--dataset",
            str(mlp_dataset),
            "--out",
            str(tmp_path),
            "--latency-runs",
            "20",
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert "recipe" in out and "fp16" in out and "baseline p50" in out
    bad = tmp_path / "bad.onnx"
    bad.write_text("hello")
    assert main([str(bad), "--recipe", "fp16", "--out", str(tmp_path), "--quiet"]) == 2
    assert "error: bad.onnx is not" in capsys.readouterr().err
    wrong = tmp_path / "wrong.npz"
    import numpy as np

    np.savez(wrong, image=np.zeros((4, 1, 64), np.float32))
    assert (
        main(
            [
                str(mlp_path),
                "--recipe",
                "fp16",
                "--dataset",
                str(wrong),
                "--out",
                str(tmp_path),
                "--quiet",
            ]
        )
        == 2
    )
    assert "['image'] match no model input" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli(tmp_path, mlp_path):
    root = Path(__file__).resolve().parents[3]
    result = subprocess.run(
        [sys.executable, "-m", "compression.engine", "--help"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "int8-dynamic" in result.stdout
