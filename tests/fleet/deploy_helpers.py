"""Factories for the deployment tests: real ONNX files in a temporary ARTIFACT_ROOT, signed with
the server's key, and devices with inventory and a device token."""

from __future__ import annotations

import io

import onnx
import pytest
from rest_framework.test import APIClient

from compression import signing, storage
from compression.models import AIModel, ModelVersion, Variant, VariantStatus
from fleet.models import Device, DeviceStatus
from tests.compression.engine.models import build_digits_mlp

HIDDEN = (16,)


@pytest.fixture
def artifact_root(settings, tmp_path):
    """A private ARTIFACT_ROOT (and so a private signing key) per test."""
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    settings.ARTIFACT_ROOT.mkdir()
    return settings.ARTIFACT_ROOT


def onnx_bytes(tag: str = "", hidden: tuple[int, ...] = HIDDEN) -> bytes:
    """The digits MLP; ``tag`` changes the bytes (doc string) but not the outputs."""
    proto = onnx.ModelProto()
    proto.CopyFrom(build_digits_mlp(hidden))
    proto.doc_string = tag
    return proto.SerializeToString()


def broken_onnx_bytes() -> bytes:
    """Loads and runs, but answers differently: every weight scaled (fails the health check)."""
    from onnx import numpy_helper

    proto = onnx.ModelProto()
    proto.CopyFrom(build_digits_mlp(HIDDEN))
    for i, init in enumerate(proto.graph.initializer):
        arr = numpy_helper.to_array(init)
        proto.graph.initializer[i].CopyFrom(numpy_helper.from_array((-arr * 3.0).astype(arr.dtype), init.name))
    return proto.SerializeToString()


def store(kind: str, data: bytes):
    return storage.place(storage.receive(kind, io.BytesIO(data)), ".onnx")


def make_model(name: str = "digits", version: int = 1) -> tuple[AIModel, ModelVersion]:
    model, _ = AIModel.objects.get_or_create(name=name)
    s = store("models", onnx_bytes(f"{name}-v{version}"))
    v = ModelVersion.objects.create(model=model, version=version, sha256=s.sha256, size_bytes=s.size_bytes,
                                    file=s.relpath)
    return model, v


def add_variant(version: ModelVersion, recipe: str = "original", *, data: bytes | None = None,
                size_bytes: int | None = None, peak_memory_bytes: int | None = None, eps=(),
                p50: float | None = None, signature: str | None = None,
                fidelity: dict | None = None) -> Variant:
    """A verified, signed variant whose file really exists. ``size_bytes`` overrides the
    recorded size (placement tests); the file keeps its real size."""
    s = store("variants", data if data is not None else onnx_bytes(f"{version.pk}-{recipe}"))
    return Variant.objects.create(
        source=version, recipe=recipe, status=VariantStatus.ACCEPTED, sha256=s.sha256,
        size_bytes=size_bytes if size_bytes is not None else s.size_bytes, file=s.relpath,
        signature=signature if signature is not None else signing.sign(s.sha256),
        latency_ms={"p50": p50} if p50 is not None else {}, peak_memory_bytes=peak_memory_bytes,
        execution_providers=list(eps), fidelity=fidelity or {"cosine_min": 0.9999},
    )


def make_device(name: str, *, labels=None, cpu_model: str = "Cortex-A72", arch: str = "aarch64",
                memory: int | None = 4 * 1024**3, disk: int | None = 32 * 1024**3, eps=("CPUExecutionProvider",),
                status: str = DeviceStatus.ACTIVE) -> Device:
    return Device.objects.create(
        name=name, fingerprint=f"fp-{name}", status=status, labels=labels or {}, cpu_model=cpu_model, arch=arch,
        memory_total_bytes=memory, disk_total_bytes=disk, execution_providers=list(eps),
    )


def agent_client(device: Device) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {device.issue_credential()}")
    return client
