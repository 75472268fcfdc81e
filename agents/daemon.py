"""The agent daemon: one thread, one loop, running whichever job is due next.

Signals: SIGTERM and SIGINT stop it cleanly (the buffer is already on disk; one last report is
attempted; the WAL is checkpointed); SIGHUP reloads the config file, the environment's overrides
are kept, and the credentials are read again. The status file (``STATE_DIR/status.json``) is
rewritten atomically after every round of jobs for ``edgefleet-agent status``.

Memory: the process imports psutil, sqlite3, json, logging and the agent's own modules, and
``ssl`` only for an https server. onnxruntime is never imported here (see ``agents.probe``).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time

from agents import __version__, state
from agents.buffer import Buffer
from agents.config import AgentConfig, ConfigError, load_config
from agents.jobs import (
    JOB_ERROR_RETRY_S,
    Context,
    CredentialsWatchJob,
    InventoryJob,
    Job,
    Link,
    SampleJob,
    TelemetryJob,
)

log = logging.getLogger("edgefleet.agent")

EXIT_OK = 0
EXIT_NOT_ENROLLED = 78  # EX_CONFIG: the systemd unit does not restart on it
MAX_SLEEP_S = 60.0


def setup_logging(level: str) -> None:
    """Log to stderr; under systemd (JOURNAL_STREAM set) without our own timestamps."""
    fmt = (
        "%(levelname)s %(message)s"
        if os.environ.get("JOURNAL_STREAM")
        else "%(asctime)s %(levelname)s %(message)s"
    )
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(fmt))
        root.addHandler(handler)
    root.setLevel(level.upper())


class Daemon:
    """Runs the jobs until told to stop. ``flags`` and ``config_file`` are kept for SIGHUP."""

    def __init__(
        self, config: AgentConfig, flags: dict | None = None, config_file: str | None = None
    ):
        self.config = config
        self.flags = flags or {}
        self.config_file = config_file
        self.state_dir = config.state_dir
        self.stopping = False
        self.reload_requested = False
        self.jobs: list[Job] = []
        self.started_at = time.time()
        self._wake_r = self._wake_w = -1

    # --- setup ----------------------------------------------------------------------------------

    def build_jobs(self, ctx) -> list[Job]:
        """The daemon's jobs, deployments included (agents.models_job)."""
        from agents.inventory import collect
        from agents.models_job import DeployJob
        from agents.sampler import Sampler

        telemetry = TelemetryJob(ctx)
        sampler = Sampler(ctx.config.effective_models_dir)
        return [
            SampleJob(ctx, sampler, on_sample=[telemetry]),
            telemetry,
            InventoryJob(ctx, collect),
            CredentialsWatchJob(ctx, on_change=self.request_reload),
            DeployJob(ctx),
        ]

    def run(self) -> int:
        state.ensure_state_dir(self.state_dir)
        creds = state.load_credentials(self.state_dir)
        if creds is None:
            log.error(
                "not enrolled: no %s in %s. Run `edgefleet-agent enroll --server URL "
                "--token TOKEN` first.",
                state.CREDENTIALS,
                self.state_dir,
            )
            return EXIT_NOT_ENROLLED
        lock = state.RunLock(self.state_dir)
        lock.acquire()
        try:
            previous = state.read_status(self.state_dir) or {}
            if previous.get("device_id") != creds["device_id"]:
                previous = {}
            buffer = Buffer(
                os.path.join(self.state_dir, state.BUFFER),
                max_bytes=self.config.buffer_max_bytes,
                max_age_s=self.config.buffer_max_age,
                sync=self.config.sync,
            )
            self.ctx = Context(self.config, creds, buffer, Link(previous.get("last_report_at")))
            self.jobs = self.build_jobs(self.ctx)
            self._install_signals()
            log.info(
                "edgefleet-agent %s: device %s, server %s, every %gs in batches of %d, "
                "%d samples buffered",
                __version__,
                creds["device_id"],
                self.ctx.client.server,
                self.ctx.interval,
                self.ctx.batch_size,
                len(buffer),
            )
            try:
                self._loop()
            finally:
                self._shutdown()
        finally:
            lock.release()
        return EXIT_OK

    # --- signals --------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        # Handlers only set flags; the wakeup pipe makes the loop's select() return at once.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, signum, frame) -> None:
        self.stopping = True

    def _on_hup(self, signum, frame) -> None:
        self.reload_requested = True

    def request_reload(self) -> None:
        self.reload_requested = True

    def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        try:
            readable, _, _ = select.select([self._wake_r], [], [], min(seconds, MAX_SLEEP_S))
        except InterruptedError:  # pragma: no cover - PEP 475 retries, but be safe
            return
        if readable:
            try:
                while os.read(self._wake_r, 512):
                    pass
            except BlockingIOError:
                pass

    # --- the loop -------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self.stopping:
            if self.reload_requested:
                self.reload_requested = False
                self.reload()
            now = time.monotonic()
            job = min(self.jobs, key=lambda j: j.due)
            if job.due > now:
                self._sleep(job.due - now)
                continue
            try:
                job.run(now)
            except Exception:
                # A bug or a broken sensor must not kill the agent: log it, try the job later.
                log.exception("job %s failed; retrying in %.0f s", job.name, JOB_ERROR_RETRY_S)
                job.due = time.monotonic() + JOB_ERROR_RETRY_S
            self.write_status()

    def reload(self) -> None:
        """SIGHUP: re-read the config file and the credentials; keep the old ones on error."""
        try:
            config = load_config(self.flags, self.config_file)
            creds = state.load_credentials(self.state_dir)
        except (ConfigError, state.StateError) as exc:
            log.error("reload failed, keeping the current settings: %s", exc)
            return
        if creds is None:
            log.error("reload: credentials have disappeared; keeping the current ones")
            return
        if config.state_dir != self.state_dir:
            log.warning(
                "reload: state_dir cannot change while running; restart to use %s", config.state_dir
            )
            config.state_dir = self.state_dir
        setup_logging(config.log_level)
        new_device = (
            creds["device_id"] != self.ctx.creds["device_id"]
            or creds["device_token"] != self.ctx.creds["device_token"]
        )
        self.config = config
        self.ctx.reconfigure(config, creds)
        if new_device:
            self.ctx.link = Link()
            for job in self.jobs:
                if isinstance(job, TelemetryJob | InventoryJob):
                    job.not_before = 0.0
                    if isinstance(job, InventoryJob):
                        job.sent_at = None
        now = time.monotonic()
        for job in self.jobs:
            job.poke(now)
        log.info(
            "reloaded: every %gs in batches of %d, server %s",
            self.ctx.interval,
            self.ctx.batch_size,
            self.ctx.client.server,
        )

    # --- status and shutdown --------------------------------------------------------------------

    def status(self) -> dict:
        ctx = self.ctx
        stats = ctx.buffer.stats()
        link = ctx.link
        doc = {
            "pid": os.getpid(),
            "agent_version": __version__,
            "started_at": self.started_at,
            "updated_at": time.time(),
            "server": ctx.client.server,
            "device_id": ctx.creds["device_id"],
            "link": link.state,
            "last_report_at": link.last_success,
            "last_error": link.last_error,
            "last_error_at": link.last_error_at,
            "offline_since": link.offline_since,
            "buffered": stats["count"],
            "buffered_bytes": stats["bytes"],
            "oldest_buffered_ts": stats["oldest_ts"],
            "dropped_unreported": stats["dropped"],
            "dropped_total": stats["dropped_total"],
            "rejected_total": stats["rejected_total"],
            "last_seq": stats["last_seq"],
            "acked_seq": stats["acked_seq"],
            "interval_s": ctx.interval,
            "batch_size": ctx.batch_size,
            "running": not self.stopping,
        }
        for job in self.jobs:
            doc.update(job.status())
        try:
            with open("/proc/self/statm") as fh:  # cheaper than psutil for our own RSS
                doc["rss_bytes"] = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            pass
        return doc

    def write_status(self) -> None:
        try:
            state.write_status(self.state_dir, self.status())
        except OSError as exc:
            log.warning("cannot write the status file: %s", exc)

    def _shutdown(self) -> None:
        log.info("stopping")
        for job in self.jobs:
            try:
                job.shutdown()
            except Exception:
                log.exception("job %s failed while stopping", job.name)
        self.stopping = True
        self.write_status()
        buffered = len(self.ctx.buffer)
        self.ctx.client.close()
        self.ctx.buffer.close()
        signal.set_wakeup_fd(-1)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        log.info("stopped; %d samples stay buffered for the next run", buffered)


def run_daemon(
    config: AgentConfig, flags: dict | None = None, config_file: str | None = None
) -> int:
    setup_logging(config.log_level)
    try:
        return Daemon(config, flags, config_file).run()
    except (state.StateError, ConfigError) as exc:
        log.error("%s", exc)
        return 1
