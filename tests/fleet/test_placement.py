"""The auto policy as pure functions: fit on disk, memory and providers, then speed on the
device's class, then worker speed, then size."""

from __future__ import annotations

from fleet.placement import Candidate, DeviceResources, better_enough, choose_auto, choose_pinned

MiB = 1024**2


def device(**kw) -> DeviceResources:
    base = {"device_id": "dev-1", "cpu_model": "A72", "arch": "aarch64", "free_disk_bytes": 1000 * MiB,
            "available_memory_bytes": 1000 * MiB}
    return DeviceResources(**{**base, **kw})


FP32 = Candidate("fp32-0000", "original", size_bytes=400 * MiB, peak_memory_bytes=800 * MiB, worker_p50_ms=10.0)
INT8 = Candidate("int8-0000", "int8_dynamic", size_bytes=100 * MiB, peak_memory_bytes=200 * MiB, worker_p50_ms=6.0)
INT4 = Candidate("int4-0000", "int4_weight", size_bytes=60 * MiB, peak_memory_bytes=150 * MiB, worker_p50_ms=8.0)
NPU = Candidate("npu-0000", "npu", size_bytes=50 * MiB, peak_memory_bytes=100 * MiB, worker_p50_ms=1.0,
                execution_providers=("QNNExecutionProvider",))


def test_fastest_fitting_variant_by_worker_latency_without_device_measurements():
    choice = choose_auto(device(), [FP32, INT8, INT4])
    assert choice.variant_id == INT8.variant_id
    assert choice.detail["basis"] == "worker"
    assert "fastest" in choice.reason and "6.00 ms" in choice.reason


def test_disk_reserve_excludes_variants_that_would_fill_the_disk():
    choice = choose_auto(device(free_disk_bytes=150 * MiB), [FP32, INT8, INT4], disk_reserve_bytes=64 * MiB)
    assert choice.variant_id == INT4.variant_id  # 100 MiB > 150 - 64
    assert "free disk" in choice.detail["rejected"][INT8.variant_id]
    assert FP32.variant_id in choice.detail["rejected"]


def test_memory_excludes_variants_whose_peak_does_not_fit():
    choice = choose_auto(device(available_memory_bytes=300 * MiB), [FP32, INT8])
    assert choice.variant_id == INT8.variant_id
    assert "peak memory" in choice.detail["rejected"][FP32.variant_id]


def test_memory_estimate_without_a_measurement_is_a_multiple_of_the_size():
    big = Candidate("big-0000", "original", size_bytes=200 * MiB)  # ~600 MiB estimated
    choice = choose_auto(device(available_memory_bytes=500 * MiB), [big])
    assert choice.variant_id is None
    assert "no variant fits" in choice.reason


def test_execution_providers_the_device_lacks_exclude_a_variant():
    assert choose_auto(device(), [INT8, NPU]).variant_id == INT8.variant_id
    with_npu = device(execution_providers=("QNNExecutionProvider", "CPUExecutionProvider"))
    assert choose_auto(with_npu, [INT8, NPU]).variant_id == NPU.variant_id


def test_latency_measured_on_the_same_device_class_wins_over_worker_latency():
    # On this class int4 turned out faster than int8, whatever the worker said.
    class_p50 = {INT8.variant_id: 30.0, INT4.variant_id: 20.0}
    choice = choose_auto(device(), [FP32, INT8, INT4], class_p50)
    assert choice.variant_id == INT4.variant_id
    assert choice.detail["basis"] == "device_class"
    assert choice.detail["latency_source"] == "measured on this device class"


def test_unmeasured_variants_are_estimated_from_the_class_speed_factor():
    # int8 measured 3x slower than on the worker; fp32 is then estimated at 30 ms, int4 at 24 ms.
    choice = choose_auto(device(), [FP32, INT8, INT4], {INT8.variant_id: 18.0})
    assert choice.variant_id == INT8.variant_id
    ranking = {r["variant_id"]: r for r in choice.detail["ranking"]}
    assert ranking[INT4.variant_id]["latency_ms"] == 24.0
    assert ranking[INT4.variant_id]["latency_source"] == "estimated from worker latency"


def test_without_any_latency_the_smallest_fitting_variant_is_chosen():
    a = Candidate("a-000000", "x", size_bytes=30 * MiB)
    b = Candidate("b-000000", "y", size_bytes=20 * MiB)
    choice = choose_auto(device(), [a, b])
    assert choice.variant_id == b.variant_id
    assert choice.detail["basis"] == "size"


def test_unknown_resources_do_not_exclude_but_are_named():
    choice = choose_auto(device(free_disk_bytes=None, available_memory_bytes=None), [FP32])
    assert choice.variant_id == FP32.variant_id
    assert "disk and memory unknown" in choice.reason


def test_no_candidates_means_no_choice():
    assert choose_auto(device(), []).variant_id is None


def test_pinned_variant_is_kept_unless_it_cannot_run():
    assert choose_pinned(device(), INT8).variant_id == INT8.variant_id
    refused = choose_pinned(device(), NPU)
    assert refused.variant_id is None and "QNNExecutionProvider" in refused.reason


def test_replacement_needs_a_clear_improvement():
    assert not better_enough(10.0, 9.5)
    assert better_enough(10.0, 8.0)
    assert better_enough(None, 8.0)
    assert not better_enough(10.0, None)
