"""The model registry: models, uploaded versions (validated, content-addressed, with a verified
and signed ``original`` variant) and datasets. Called by the API, the dashboard and tests."""

from __future__ import annotations

import contextlib
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import onnx
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max

from compression import signing, storage
from compression.engine import EngineError
from compression.engine.data import load_dataset, synthesize
from compression.engine.host import lineage as host_lineage
from compression.engine.inspect import ModelInfo, TensorSpec, inspect_model, runtime_session
from compression.engine.verify import LatencySettings, baseline_latency, gzip_size, run_samples
from compression.models import AIModel, Dataset, ModelVersion, Variant, VariantStatus
from fleet import audit

ORIGINAL = "original"
ZIP_MAGIC = b"PK\x03\x04"
PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2
"""A single .onnx file is a protobuf, which cannot exceed 2 GiB."""
ORIGINAL_LATENCY = LatencySettings(threads=1, warmup=3, budget_s=0.5, min_runs=10, max_runs=200)


class RegistryError(Exception):
    """A request the registry refuses; ``status`` is the HTTP status the API answers with."""

    status = 400

    def __init__(self, message: str, **extra: Any):
        super().__init__(message)
        self.extra = extra


class TooLarge(RegistryError):
    status = 413


class Conflict(RegistryError):
    status = 409


def upload_limit() -> int:
    return int(settings.MAX_MODEL_UPLOAD_BYTES)


def too_large_message(size: int | None = None) -> str:
    limit = upload_limit()
    got = f"the upload is {size} bytes; " if size else ""
    return (
        f"{got}the limit is {limit} bytes ({limit / 1024**2:.0f} MiB), "
        "set by EDGEFLEET_MAX_MODEL_UPLOAD_BYTES"
    )


def estimate_peak_memory(size_bytes: int) -> int:
    """A placement estimate, not a measurement: onnxruntime holds the weights once and may
    pre-pack them once more, plus roughly 32 MiB of runtime and activations for small models."""
    return int(2 * size_bytes + 32 * 1024**2)


def spec_dicts(specs: list[TensorSpec]) -> list[dict[str, Any]]:
    return [{"name": s.name, "dtype": s.dtype, "shape": s.shape} for s in specs]


def version_inputs(version: ModelVersion) -> list[TensorSpec]:
    """The model inputs recorded in a version's metadata, as the engine's TensorSpec."""
    return [
        TensorSpec(i["name"], i["dtype"], i["shape"]) for i in version.metadata.get("inputs", [])
    ]


# --- Models ---------------------------------------------------------------------------------------


def create_model(user, *, name: str, description: str = "", ip: str | None = None) -> AIModel:
    """Register a model name; its files arrive later as versions."""
    try:
        with transaction.atomic():
            model = AIModel.objects.create(
                name=name, description=description, created_by=user if getattr(user, "pk", None) else None
            )
            audit.record(user, "model.create", model, after={"name": name}, ip=ip)
    except IntegrityError:  # the name is unique: a concurrent create won
        raise Conflict(f"a model named '{name}' already exists") from None
    return model


# --- Versions -----------------------------------------------------------------------------------


@dataclass
class _Prepared:
    """An upload validated and in its final place, not yet in the database."""

    stored: storage.Stored
    model_relpath: str
    """The .onnx to load: the file itself, or the .onnx inside a stored zip's directory."""
    info: ModelInfo
    fmt: str
    files: list[str]


def _extract_zip(pending: storage.Pending, limit: int) -> tuple[Path, Path, list[str]]:
    """Unpack an uploaded zip into a private temporary directory and find its one .onnx file.
    Refuses paths that escape the directory, and archives that unpack to more than ``limit``."""
    target = storage.temp_dir("models")
    try:
        try:
            archive = zipfile.ZipFile(pending.path)
        except zipfile.BadZipFile as exc:
            raise RegistryError(f"the .zip upload is not a readable zip archive: {exc}") from exc
        with archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            if sum(m.file_size for m in members) > limit:
                raise TooLarge("the zip unpacks to more than the upload limit; " + too_large_message())
            names = []
            for member in members:
                rel = PurePosixPath(member.filename)
                if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                    raise RegistryError(f"zip member {member.filename!r} has an unsafe path")
                if rel.parts[0] == "__MACOSX" or rel.name.startswith("._"):
                    continue
                dest = target.joinpath(*rel.parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, storage.CHUNK)
                names.append(str(rel))
        onnx_files = [n for n in names if n.lower().endswith(".onnx")]
        if len(onnx_files) != 1:
            raise RegistryError(
                "a .zip upload must hold exactly one .onnx file plus its external data files; "
                f"found {len(onnx_files)} .onnx file(s): {onnx_files}"
            )
        return target, target / onnx_files[0], sorted(names)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise


def _is_zip(filename: str, pending: storage.Pending) -> bool:
    with open(pending.path, "rb") as handle:
        magic = handle.read(4)
    if filename.lower().endswith(".zip"):
        return True
    return magic == ZIP_MAGIC and not filename.lower().endswith(".onnx")


def _prepare_upload(upload, filename: str) -> _Prepared:
    """Stream, validate and place an uploaded model; on any refusal nothing is left behind."""
    lower = filename.lower()
    if not lower.endswith((".onnx", ".zip")):
        raise RegistryError(
            f"'{filename}' is neither an .onnx model nor a .zip of an .onnx model with its "
            "external data files"
        )
    try:
        pending = storage.receive("models", upload, limit=upload_limit())
    except storage.TooLarge:
        raise TooLarge(too_large_message()) from None
    try:
        if _is_zip(filename, pending):
            tree, onnx_path, files = _extract_zip(pending, 4 * upload_limit())
            try:
                info = _inspect(onnx_path, filename)
                dir_rel = storage.place_tree("models", tree, pending.sha256)
            except BaseException:
                shutil.rmtree(tree, ignore_errors=True)
                raise
            pending.discard()  # the unpacked directory is what we keep
            inner = onnx_path.relative_to(tree).as_posix()
            stored = storage.Stored(dir_rel, pending.sha256, pending.size_bytes)
            return _Prepared(stored, f"{dir_rel}/{inner}", info, "zip", files)
        info = _inspect(pending.path, filename)
        stored = storage.place(pending, ".onnx")
        return _Prepared(stored, stored.relpath, info, "onnx", [filename])
    except BaseException:
        pending.discard()
        raise


def _inspect(path: Path, filename: str) -> ModelInfo:
    try:
        info = inspect_model(path)
    except EngineError as exc:
        raise RegistryError(str(exc).replace(path.name, filename, 1)) from exc
    return info


def _metadata(prepared: _Prepared) -> dict[str, Any]:
    data = prepared.info.to_dict()
    for key in ("path", "sha256", "size_bytes"):
        data.pop(key, None)
    data["inputs"] = spec_dicts(prepared.info.inputs)
    data["outputs"] = spec_dicts(prepared.info.outputs)
    data["format"] = prepared.fmt
    data["files"] = prepared.files
    return data


def verify_original(path: Path, info: ModelInfo) -> dict[str, Any]:
    """Load and run the uploaded model on synthesized inputs and measure its latency. When an
    input's shape cannot be resolved (a symbolic dim other than the batch axis), the model stays
    verified by the checker and a session, without latency, and ``note`` says why."""
    result: dict[str, Any] = {"latency_ms": {}, "note": "", "ran": False}
    try:
        feeds, notes = synthesize(info.inputs, None, n_samples=2)
    except EngineError as exc:
        result["note"] = (
            f"checked and loaded, not run: {exc}; give input_shapes when you start a job"
        )
        return result
    try:
        run_samples(runtime_session(path), feeds)
        result["latency_ms"] = baseline_latency(path, feeds, ORIGINAL_LATENCY)
    except Exception as exc:  # random inputs may be outside what the model accepts
        result["note"] = (
            f"checked and loaded; a run on synthesized inputs failed ({exc}); "
            "latency is measured when a job runs with a dataset"
        )
        return result
    result["ran"] = True
    result["note"] = "; ".join(
        ["loaded and ran on synthesized inputs", *notes, "latency measured on the server"]
    )
    return result


def _original_artifact(prepared: _Prepared) -> storage.Stored | None:
    """The deployable single file of an upload: the file itself, or for a zip, the model with
    its external data folded into one .onnx (impossible past protobuf's 2 GiB)."""
    if prepared.fmt == "onnx":
        return prepared.stored
    source = storage.path_of(prepared.model_relpath)
    total = sum(p.stat().st_size for p in source.parent.rglob("*") if p.is_file())
    if total > PROTOBUF_LIMIT:
        return None
    model = onnx.load(str(source), load_external_data=True)
    with contextlib.ExitStack() as stack:
        tmp = storage.temp_dir("variants")
        stack.callback(shutil.rmtree, tmp, True)
        single = tmp / "model.onnx"
        onnx.save_model(model, str(single), save_as_external_data=False)
        return storage.adopt("variants", single, ".onnx")


def add_version(
    user, model: AIModel, upload, *, filename: str, notes: str = "", ip: str | None = None
) -> ModelVersion:
    """Store and validate an uploaded ONNX file (or zip with external data) as the next version
    of ``model``, with its ``original`` variant verified and signed. Raises ``RegistryError``
    (400), ``TooLarge`` (413) or ``Conflict`` (409, the same file is already a version)."""
    prepared = _prepare_upload(upload, filename)
    existing = ModelVersion.objects.filter(model=model, sha256=prepared.stored.sha256).first()
    if existing is not None:
        raise Conflict(
            f"this file is already version {existing.version} of '{model.name}'",
            version_id=str(existing.id),
        )
    model_path = storage.path_of(prepared.model_relpath)
    check = verify_original(model_path, prepared.info)
    artifact = _original_artifact(prepared)
    metadata = _metadata(prepared)
    metadata["original_verification"] = check
    with transaction.atomic():
        AIModel.objects.select_for_update().filter(pk=model.pk).first()  # serialise numbering
        number = (model.versions.aggregate(n=Max("version"))["n"] or 0) + 1
        version = ModelVersion.objects.create(
            model=model,
            version=number,
            sha256=prepared.stored.sha256,
            size_bytes=prepared.stored.size_bytes,
            file=prepared.model_relpath,
            original_filename=filename[:255],
            metadata=metadata,
            notes=notes,
            created_by=user if getattr(user, "pk", None) else None,
        )
        original = _original_variant(version, artifact, check, prepared)
        audit.record(
            user,
            "model.version.upload",
            version,
            after={
                "sha256": version.sha256,
                "size_bytes": version.size_bytes,
                "filename": filename,
                "original_variant": str(original.id),
            },
            ip=ip,
        )
    return version


def _original_variant(
    version: ModelVersion,
    artifact: storage.Stored | None,
    check: dict[str, Any],
    prepared: _Prepared,
) -> Variant:
    host = host_lineage()
    lineage = {
        "source_version": str(version.id),
        "source_sha256": version.sha256,
        "recipe": ORIGINAL,
        "params": {},
        "dataset_sha256": None,
        "onnx": host["onnx"],
        "onnxruntime": host["onnxruntime"],
        "cpu_flags": host["cpu_flags"],
        "cpu_model": host["cpu_model"],
        "verification": check["note"],
    }
    if artifact is None:
        return Variant.objects.create(
            source=version,
            recipe=ORIGINAL,
            status=VariantStatus.REJECTED,
            reason="the model with its external data exceeds 2 GiB and cannot be deployed as "
            "one .onnx file; compress it first",
            lineage=lineage,
        )
    return Variant.objects.create(
        source=version,
        recipe=ORIGINAL,
        status=VariantStatus.ACCEPTED,
        reason=check["note"],
        sha256=artifact.sha256,
        size_bytes=artifact.size_bytes,
        gzip_bytes=gzip_size(artifact.path),
        file=artifact.relpath,
        signature=signing.sign(artifact.sha256),
        latency_ms=check["latency_ms"],
        baseline_latency_ms=check["latency_ms"],
        fidelity={"reference": True, "cosine_min": 1.0, "max_abs_error": 0.0},
        peak_memory_bytes=estimate_peak_memory(artifact.size_bytes),
        execution_providers=["CPUExecutionProvider"],
        lineage=lineage,
    )


# --- Datasets -----------------------------------------------------------------------------------


def add_dataset(
    user,
    model: AIModel,
    upload,
    *,
    filename: str,
    name: str = "",
    version: ModelVersion | None = None,
    ip: str | None = None,
) -> Dataset:
    """Store an .npz dataset after validating it against ``version``'s inputs (default: the
    model's latest version). Errors name the array and the expected shape."""
    if not filename.lower().endswith(".npz"):
        raise RegistryError(f"'{filename}' is not an .npz file (one array per model input)")
    version = version or model.versions.order_by("-version").first()
    if version is None:
        raise RegistryError(f"model '{model.name}' has no version yet; upload a model first")
    if version.model_id != model.pk:
        raise RegistryError(f"version {version.id} does not belong to model '{model.name}'")
    try:
        pending = storage.receive("datasets", upload, limit=upload_limit())
    except storage.TooLarge:
        raise TooLarge(too_large_message()) from None
    try:
        try:
            feeds, labels, _, notes = load_dataset(pending.path, version_inputs(version))
        except EngineError as exc:
            raise RegistryError(str(exc).replace(pending.path.name, filename)) from exc
        metadata = {
            "arrays": {
                k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in feeds.items()
            },
            "labels": None
            if labels is None
            else {"shape": list(labels.shape), "classes": int(len(set(labels.tolist())))},
            "validated_against": {"version_id": str(version.id), "version": version.version},
            "notes": notes,
            "filename": filename,
        }
        samples = len(next(iter(feeds.values())))
        stored = storage.place(pending, ".npz")
    except BaseException:
        pending.discard()
        raise
    with transaction.atomic():
        dataset = Dataset.objects.create(
            model=model,
            name=(name or Path(filename).stem)[:100],
            sha256=stored.sha256,
            size_bytes=stored.size_bytes,
            file=stored.relpath,
            samples=samples,
            has_labels=labels is not None,
            metadata=metadata,
            created_by=user if getattr(user, "pk", None) else None,
        )
        audit.record(
            user,
            "model.dataset.upload",
            dataset,
            after={"sha256": stored.sha256, "samples": samples, "labels": labels is not None},
            ip=ip,
        )
    return dataset


# --- unreferenced files ---------------------------------------------------------------------------

_FILE_MODELS = (ModelVersion, Variant, Dataset)


def collect_artifacts(*, grace_s: float = 24 * 3600, dry_run: bool = False) -> list[storage.Collected]:
    """Remove stored files no version, variant or dataset references any more (a failed upload
    after its file was placed, a job's re-run, rows deleted in the admin), once they are older
    than ``grace_s``. See :func:`compression.storage.collect` for why a concurrent upload of the
    same bytes is safe."""
    from django.db.models import Q

    referenced = set()
    for model in _FILE_MODELS:
        referenced.update(model.objects.exclude(file="").values_list("file", flat=True))

    def still_unreferenced(entry: str) -> bool:
        match = Q(file=entry) | Q(file__startswith=f"{entry}/")
        return not any(model.objects.filter(match).exists() for model in _FILE_MODELS)

    return storage.collect(referenced, grace_s=grace_s, dry_run=dry_run, still_unreferenced=still_unreferenced)
