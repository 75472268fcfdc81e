"""Facts about the host that change quantization choices and explain measurements."""

from __future__ import annotations

import functools
import platform
import sys
from pathlib import Path
from typing import Any

INTERESTING_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "i8mm",
)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


@functools.cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def has_vnni() -> bool:
    """VNNI (or ARM dot-product) instructions: int8 math without the 7-bit ``reduce_range``
    workaround for overflow of the u8*s8 pairwise sums on older AVX2/AVX-512 CPUs."""
    flags = cpu_flags()
    if platform.machine().lower() in ("aarch64", "arm64"):
        return True
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def lineage() -> dict[str, Any]:
    """Versions and host facts recorded with every report."""
    import numpy
    import onnx
    import onnxruntime

    return {
        "python": sys.version.split()[0],
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_flags": sorted(f for f in INTERESTING_FLAGS if f in cpu_flags()),
        "vnni": has_vnni(),
    }
