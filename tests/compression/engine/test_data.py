"""Datasets are validated against the model's inputs; without one, inputs are synthesized."""

import numpy as np
import pytest

from compression.engine import EngineError
from compression.engine.data import load_dataset, prepare_data, split, synthesize
from compression.engine.inspect import TensorSpec

X = TensorSpec("x", "float32", ["N", 64])
IMG = TensorSpec("image", "float32", ["N", 3, "H", "W"])


def _npz(tmp_path, **arrays):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return path


def test_a_valid_dataset_loads_with_labels_and_a_digest(mlp_dataset):
    feeds, labels, digest, notes = load_dataset(mlp_dataset, [X])
    assert feeds["x"].shape == (360, 1, 64) and feeds["x"].dtype == np.float32
    assert labels.shape == (360,) and len(digest) == 64 and notes == []


def test_rows_without_the_batch_axis_become_batches_of_one(tmp_path):
    feeds, *_ = load_dataset(_npz(tmp_path, x=np.zeros((5, 64), np.float32)), [X])
    assert feeds["x"].shape == (5, 1, 64)


def test_a_wrong_array_name_names_the_expected_inputs(tmp_path):
    path = _npz(tmp_path, pixels=np.zeros((5, 1, 64), np.float32))
    with pytest.raises(
        EngineError,
        match=r"missing array\(s\) \['x'\].*\['pixels'\] match no model input.*'x' \[N, 64\]",
    ):
        load_dataset(path, [X])


def test_a_wrong_shape_names_the_array_and_the_expected_shape(tmp_path):
    path = _npz(tmp_path, x=np.zeros((5, 1, 63), np.float32))
    with pytest.raises(
        EngineError,
        match=r"'x' has shape \[5, 1, 63\].*needs \[n, N, 64\].*axis 2 is 63, expected 64",
    ):
        load_dataset(path, [X])


def test_a_wrong_dtype_kind_is_refused_and_a_float64_is_cast(tmp_path):
    with pytest.raises(EngineError, match="dtype int64.*expects float32"):
        load_dataset(_npz(tmp_path, x=np.zeros((5, 1, 64), np.int64)), [X])
    feeds, _, _, notes = load_dataset(_npz(tmp_path, x=np.zeros((5, 1, 64))), [X])
    assert feeds["x"].dtype == np.float32 and "cast from float64" in notes[0]


def test_labels_must_match_the_sample_count(tmp_path):
    path = _npz(tmp_path, x=np.zeros((5, 1, 64), np.float32), labels=np.zeros(4, np.int64))
    with pytest.raises(EngineError, match="disagree on the number of samples"):
        load_dataset(path, [X])


def test_a_non_npz_dataset_is_refused(tmp_path):
    path = tmp_path / "d.npz"
    path.write_text("nope")
    with pytest.raises(EngineError, match="not a readable .npz"):
        load_dataset(path, [X])


def test_synthesis_uses_given_shapes_and_sets_only_a_dynamic_batch_to_one():
    feeds, notes = synthesize([X], None, 4)
    assert feeds["x"].shape == (4, 1, 64) and "batch axis 'N' set to 1" in notes[0]
    feeds, _ = synthesize([IMG], {"image": [1, 3, 32, 32]}, 4)
    assert feeds["image"].shape == (4, 1, 3, 32, 32)


def test_synthesis_refuses_an_unknown_dynamic_dim_and_says_how_to_give_it():
    with pytest.raises(
        EngineError, match=r"dynamic dimension 'H' at axis 2.*--input-shape image=1,3,1,1"
    ):
        synthesize([IMG], None, 4)
    with pytest.raises(EngineError, match="fixes it to 3"):
        synthesize([IMG], {"image": [1, 4, 32, 32]}, 4)


def test_the_split_is_deterministic_and_disjoint():
    feeds = {"x": np.arange(100, dtype=np.float32).reshape(100, 1, 1)}
    labels = np.arange(100)
    a = split(feeds, labels, calibration_samples=30)
    b = split(feeds, labels, calibration_samples=30)
    assert all(np.array_equal(x, y) for x, y in zip(a[1::2], b[1::2], strict=True))
    assert len(a[1]) == 30 and len(a[3]) == 70
    assert not set(a[1]) & set(a[3])


def test_prepare_data_marks_synthetic_inputs():
    data = prepare_data([X], synthetic_samples=10)
    assert data.synthetic and data.sha256 is None
    assert data.n_calibration + data.n_evaluation == 10
