"""The deployment job: make the models on this device match the server's desired state.

Layout of the models directory (``models_dir``, default ``STATE_DIR/models``)::

    <model>/versions/<sha256>.onnx   verified artifacts (the current one and the previous one)
    <model>/current -> versions/<sha256>.onnx   what the device's application loads
    <model>/previous -> versions/<sha256>.onnx  kept for instant rollback
    .downloads/<sha256>.part         partial downloads, resumed with HTTP Range
    .deploy-state.json               ETag, failed variants, unsent reports

Install procedure for one model: download (resumable, optional bandwidth limit) → verify sha256
and Ed25519 signature → in a child process (``python -m agents.check_model``) load with
onnxruntime, compare outputs on the health-check inputs with the reference outputs, benchmark
p50/p95 and peak RSS → swap ``current`` atomically (a temporary symlink moved over it with
``os.replace``) keeping the old target as ``previous`` → report. Any failure leaves ``current``
untouched and is reported as failed; the variant is not retried until the server assigns it
again under a new assignment. Every step is reported to ``POST /api/v1/agent/reports``.

Options are agent settings (``agents.config``: TOML file, environment, ``run`` flags), all
named ``deploy_*``: ``deploy_poll`` (30s), ``deploy_rate_limit`` (bytes/s, 0 = none),
``deploy_quota`` (bytes for all models, 0 = none), ``deploy_check_timeout`` (5m),
``deploy_allow_unverified`` (false), ``deploy_public_key`` (the pinned server key otherwise). Their
environment names are the ``EDGEFLEET_AGENT_DEPLOY_*`` ones this module has always read.

Memory: this module runs in the daemon, so it imports at the top only what the daemon has
loaded anyway. ``hashlib`` (which maps OpenSSL's libcrypto), ``shutil`` (which brings ``bz2`` and
``lzma``) and ``tempfile`` cost about 4.5 MiB of RSS together and are needed only while a model is
installed or removed, so they are imported inside the functions that use them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import time

from agents import artifacts, state
from agents.backoff import jittered
from agents.client import ApiError, TransportError
from agents.config import AgentConfig, read_env
from agents.jobs import Job

log = logging.getLogger("edgefleet.agent")

STATE_FILE = ".deploy-state.json"
KEY_FILE = "signing-key.json"
FIRST_POLL_DELAY_S = 2.0
_SAFE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


DEPLOY_SETTINGS = ("deploy_poll", "deploy_rate_limit", "deploy_quota", "deploy_check_timeout",
                   "deploy_allow_unverified", "deploy_public_key")


class DeployOptions:
    """The ``deploy_*`` settings of ``config`` (an :class:`AgentConfig`); without one, the
    defaults overridden by the ``EDGEFLEET_AGENT_DEPLOY_*`` environment."""

    def __init__(self, config=None):
        if config is None:
            config = AgentConfig(read_env(names=DEPLOY_SETTINGS))
        self.poll = config.deploy_poll
        self.rate_limit = config.deploy_rate_limit
        self.quota = config.deploy_quota
        self.check_timeout = config.deploy_check_timeout
        self.allow_unverified = config.deploy_allow_unverified
        self.public_key = config.deploy_public_key


class ModelsDir:
    """The on-disk layout above; every change of ``current`` is one atomic rename."""

    def __init__(self, root: str):
        self.root = root
        os.makedirs(os.path.join(root, ".downloads"), exist_ok=True)

    def model_dir(self, model: str) -> str:
        if not _SAFE.match(model) or model.startswith("."):
            raise ValueError(f"unsafe model name {model!r}")
        return os.path.join(self.root, model)

    def version_path(self, model: str, sha256: str) -> str:
        return os.path.join(self.model_dir(model), "versions", f"{sha256}.onnx")

    def part_path(self, sha256: str) -> str:
        return os.path.join(self.root, ".downloads", f"{sha256}.part")

    def current_sha(self, model: str, link: str = "current") -> str | None:
        try:
            target = os.readlink(os.path.join(self.model_dir(model), link))
        except OSError:
            return None
        return os.path.basename(target).removesuffix(".onnx")

    def models(self) -> list[str]:
        return sorted(n for n in os.listdir(self.root) if not n.startswith(".") and _SAFE.match(n))

    def _link(self, model: str, link: str, sha256: str | None) -> None:
        path = os.path.join(self.model_dir(model), link)
        if sha256 is None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            return
        tmp = f"{path}.tmp-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        os.symlink(os.path.join("versions", f"{sha256}.onnx"), tmp)
        os.replace(tmp, path)  # atomic: readers see the old or the new target, never nothing

    def swap(self, model: str, sha256: str | None) -> None:
        """Make ``sha256`` current (None: no model); the old current becomes ``previous``."""
        old = self.current_sha(model)
        if old == sha256:
            return
        if old is not None:
            self._link(model, "previous", old)
        self._link(model, "current", sha256)
        with contextlib.suppress(OSError):
            fd = os.open(self.model_dir(model), os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        self.prune(model)

    def adopt(self, model: str, part: str, sha256: str) -> str:
        final = self.version_path(model, sha256)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.replace(part, final)
        return final

    def prune(self, model: str) -> None:
        """Keep only the current and previous versions of a model."""
        keep = {self.current_sha(model), self.current_sha(model, "previous")}
        vdir = os.path.join(self.model_dir(model), "versions")
        for name in os.listdir(vdir) if os.path.isdir(vdir) else []:
            if name.removesuffix(".onnx") not in keep:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(vdir, name))

    def remove(self, model: str) -> None:
        import shutil  # lazy: see the module's docstring

        shutil.rmtree(self.model_dir(model), ignore_errors=True)

    def usage(self) -> int:
        total = 0
        for dirpath, _, files in os.walk(self.root):
            for f in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, f)).st_size
        return total


def run_check(model_path: str, health: dict | None, timeout: float) -> dict:
    """``python -m agents.check_model`` in a child; its JSON verdict, or a failure."""
    import tempfile  # lazy: see the module's docstring

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(health or {}, fh)
        check_file = fh.name
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "agents.check_model", "--model", model_path, "--check", check_file],
            capture_output=True, text=True, timeout=timeout, env=env,
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"model check timed out after {timeout:.0f}s"}
    finally:
        os.remove(check_file)
    try:
        verdict = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = (proc.stderr or "").strip()[-300:]
        return {"ok": False, "error": f"model check crashed (exit {proc.returncode}): {tail}"}
    if proc.returncode != 0 and verdict.get("ok"):
        verdict["ok"] = False
    return verdict


class DeployJob(Job):
    """Polls the desired state (jittered, with ETag) and converges the models directory."""

    name = "deploy"

    def __init__(self, ctx, options: DeployOptions | None = None):
        self.ctx = ctx
        self._fixed_options = options
        self._options: DeployOptions | None = None
        self._options_for = None
        self.models = ModelsDir(ctx.config.effective_models_dir)
        self.state_path = os.path.join(self.models.root, STATE_FILE)
        saved = state.read_json(self.state_path) or {}
        self.etag: str | None = saved.get("etag")
        self.doc: dict | None = saved.get("doc")
        self.failed: dict[str, str] = saved.get("failed", {})  # "assignment:variant" -> error
        self.outbox: list[dict] = saved.get("outbox", [])
        # After the first sample and its report (a quick first report matters more to an operator
        # than a model that arrives a second later); before this, it ran first and delayed it.
        self.due = time.monotonic() + FIRST_POLL_DELAY_S
        self.last_error: str | None = None
        self.sent: set[str] = set()

    @property
    def options(self) -> DeployOptions:
        """Fixed ones if given, else the current config's (so SIGHUP applies new values)."""
        if self._fixed_options is not None:
            return self._fixed_options
        if self._options is None or self._options_for is not self.ctx.config:
            self._options, self._options_for = DeployOptions(self.ctx.config), self.ctx.config
        return self._options

    # --- bookkeeping ------------------------------------------------------------------------------

    def _save(self) -> None:
        state.write_json_atomic(self.state_path, {"etag": self.etag, "doc": self.doc, "failed": self.failed,
                                                  "outbox": self.outbox[-500:]})

    def report(self, entry: dict, variant_id, st: str, **extra) -> None:
        import hashlib  # lazy: see the module's docstring

        # Deterministic ids: a replay after a lost answer is stored once by the server.
        raw = f"{entry['assignment_id']}:{variant_id}:{st}:{extra.pop('step', '')}"
        body = {"report_id": hashlib.sha256(raw.encode()).hexdigest()[:40],
                "model": entry["model"], "variant_id": variant_id, "state": st,
                "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}
        if body["report_id"] in self.sent:
            return  # already told the server (a replay would be ignored there anyway)
        self.sent.add(body["report_id"])
        self.outbox.append(body)
        self.flush()

    def flush(self) -> None:
        while self.outbox:
            batch = self.outbox[:50]
            try:
                self.ctx.client.request("POST", "/reports", {"reports": batch})
            except ApiError as exc:
                if exc.kind != "refused":
                    return
                log.warning("server refused deployment reports: %s", exc)
            except TransportError:
                return
            del self.outbox[: len(batch)]
        self._save()

    def public_key(self, key_id: str | None) -> str | None:
        if self.options.public_key:
            return self.options.public_key
        path = os.path.join(self.ctx.config.state_dir, KEY_FILE)
        pinned = state.read_json(path)
        if pinned and (key_id is None or pinned.get("key_id") == key_id):
            return pinned.get("public_key_raw_b64")
        if pinned:
            raise artifacts.VerificationError(
                f"the server signs with key {key_id}, but this device pinned {pinned.get('key_id')}; "
                f"remove {path} to trust the new key")
        data = self.ctx.client.request("GET", "/signing-key").json()
        state.write_json_atomic(path, {"key_id": data.get("key_id"),
                                       "public_key_raw_b64": data.get("public_key_raw_b64")})
        return data.get("public_key_raw_b64")

    # --- the job ------------------------------------------------------------------------------------

    def run(self, now: float) -> None:
        try:
            self.poll()
            self.converge()
            self.last_error = None
        except (TransportError, ApiError) as exc:
            self.last_error = str(exc)
            log.warning("deployment poll failed: %s", exc)
        finally:
            self.due = time.monotonic() + jittered(self.options.poll, self.ctx.config.jitter)

    def poll(self) -> None:
        headers = {"If-None-Match": self.etag} if self.etag and self.doc is not None else None
        resp = self.ctx.client.request("GET", "/desired-state", headers=headers)
        if resp.status == 304:
            return
        self.doc, self.etag = resp.json(), resp.headers.get("etag")
        self._save()

    def converge(self) -> None:
        if self.doc is None:
            return
        self.flush()
        wanted = {e["model"]: e for e in self.doc.get("models", [])}
        for model in self.models.models():
            if model not in wanted:
                log.info("model %s is no longer deployed here; removing it", model)
                self.models.remove(model)
        for entry in wanted.values():
            try:
                self.converge_one(entry)
            except (TransportError, ApiError):
                raise
            except Exception as exc:  # a bug must not stop the other models
                log.exception("deployment of %s failed", entry.get("model"))
                self.last_error = str(exc)

    def converge_one(self, entry: dict) -> None:
        model, variant = entry["model"], entry.get("variant")
        if variant is None:
            if self.models.current_sha(model) is not None or os.path.isdir(self.models.model_dir(model)):
                self.models.remove(model)
                log.info("model %s removed (rolled back to nothing)", model)
            if entry.get("state") == "rolling_back":
                self.report(entry, None, "removed")
            return
        vid, sha = variant["variant_id"], variant["sha256"]
        if self.models.current_sha(model) == sha:
            if entry.get("state") not in ("installed", "rolled_back"):
                self.report(entry, vid, "installed")
            return
        key = f"{entry['assignment_id']}:{vid}"
        if key in self.failed:
            return  # refused before; the server falls back to the previous variant
        kept = self.models.version_path(model, sha)
        if os.path.exists(kept) and artifacts.file_sha256(kept) == sha:
            # The previous version is still here: an instant rollback, no download, no check.
            self.models.swap(model, sha)
            log.info("model %s: switched back to kept version %s", model, sha[:12])
            self.report(entry, vid, "installed", step="kept")
            return
        error = self.install(entry, variant)
        if error:
            self.failed[key] = error
            self._save()
            self.report(entry, vid, "failed", error=error)

    def install(self, entry: dict, variant: dict) -> str | None:
        """Download, verify, check and swap one variant; an error message, or None."""
        model, vid, sha, size = entry["model"], variant["variant_id"], variant["sha256"], variant.get("size_bytes")
        if self.options.quota and size and self.models.usage() + size > self.options.quota:
            return f"disk quota for models exceeded ({self.models.usage() + size} > {self.options.quota} bytes)"
        part = self.models.part_path(sha)
        last = [-1]

        def progress(done, total):
            pct = int(done * 100 / total) if total else 0
            if pct // 10 != last[0]:
                last[0] = pct // 10
                self.report(entry, vid, "downloading", progress=float(pct), step=str(pct // 10))

        self.report(entry, vid, "downloading", progress=0.0, step="start")
        try:
            artifacts.download(self.ctx.client.server, variant["download_url"], self.ctx.creds["device_token"],
                               part, sha256=sha, size=size, timeout=self.ctx.config.timeout,
                               ca_file=self.ctx.config.ca_file, rate_limit_bps=self.options.rate_limit,
                               progress=progress)
        except artifacts.DownloadError as exc:
            if exc.status in (403, 404):
                return f"download refused: {exc}"
            raise TransportError(str(exc)) from None  # keep the .part; resume on the next round
        self.report(entry, vid, "verifying")
        try:
            artifacts.verify(part, sha256=sha, signature=variant.get("signature", ""),
                             public_key_b64=self.public_key(self.doc.get("signing_key_id")),
                             allow_unverified=self.options.allow_unverified)
        except artifacts.VerificationError as exc:
            with contextlib.suppress(FileNotFoundError):
                os.remove(part)
            return f"verification failed: {exc}"
        path = self.models.adopt(model, part, sha)
        self.report(entry, vid, "checking")
        verdict = run_check(path, variant.get("health_check"), self.options.check_timeout)
        if not verdict.get("ok"):
            self.models.prune(model)  # drop the refused file; current is untouched
            return verdict.get("error") or "model check failed"
        self.models.swap(model, sha)
        log.info("model %s: now running %s (%s)", model, vid, sha[:12])
        bench = {k: verdict[k] for k in ("p50_ms", "p95_ms", "peak_rss_bytes") if verdict.get(k) is not None}
        self.report(entry, vid, "installed", benchmark=bench)
        return None

    def status(self) -> dict:
        return {"deploy_etag": self.etag, "deploy_error": self.last_error, "deploy_unsent_reports": len(self.outbox),
                "models": {m: self.models.current_sha(m) for m in self.models.models()}}
