"""The daemon's periodic jobs: sample, report telemetry, report inventory, watch credentials.

The daemon loop knows nothing about telemetry: it runs whichever :class:`Job` is due next. A job
says when it wants to run again by setting ``due`` (a ``time.monotonic()`` value; ``math.inf`` to
sleep until another job pokes it). The deployment work to come (desired-state polling, artifact
download, model swap) is one more job added to the list in ``Daemon.build_jobs``.

Jobs share a :class:`Context`: settings, credentials, the HTTP client, the buffer, and the
:class:`Link`, which records what the server last told us (reachable, pending, revoked ...) so
that every job backs off together.
"""

from __future__ import annotations

import logging
import math
import os
import time

from agents import state
from agents.backoff import Backoff, jittered
from agents.buffer import Buffer, render_samples
from agents.client import AgentClient, ApiError, TransportError

log = logging.getLogger("edgefleet.agent")

GONE_RECHECK_S = 3600.0  # a revoked device asks again hourly, in case it was a server-side slip
JOB_ERROR_RETRY_S = 60.0


class Link:
    """What we know of the server: ``unknown``, ``ok``, ``offline`` (no answer or 5xx),
    ``pending`` (awaits approval), ``disabled``, or ``gone`` (token revoked, device rejected or
    decommissioned: nothing is sent until the device is enrolled again)."""

    def __init__(self, last_success: float | None = None):
        self.state = "unknown"
        self.last_success = last_success  # epoch seconds of the last 2xx
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.offline_since: float | None = None

    def success(self) -> None:
        if self.state not in ("ok", "unknown"):
            log.info("server answers again (was %s)", self.state)
        self.state = "ok"
        self.last_success = time.time()
        self.offline_since = None

    def failure(self, state_: str, message: str) -> None:
        first = self.state != state_
        if state_ == "gone" and first:
            log.error(
                "SERVER REFUSES THIS DEVICE: %s. Nothing will be sent until the device is "
                "enrolled again (edgefleet-agent enroll --force).",
                message,
            )
        elif state_ in ("pending", "disabled") and first:
            log.warning(
                "device is %s on the server: %s; buffering samples meanwhile", state_, message
            )
        elif first:
            log.warning("server unreachable: %s; buffering samples and retrying", message)
        else:
            log.debug("still %s: %s", state_, message)
        if state_ == "offline" and self.offline_since is None:
            self.offline_since = time.time()
        self.state = state_
        self.last_error, self.last_error_at = message, time.time()


class Context:
    """What the jobs share. ``reconfigure`` applies new settings or credentials (SIGHUP)."""

    def __init__(self, config, creds: dict, buffer: Buffer, link: Link):
        self.config = config
        self.creds = creds
        self.buffer = buffer
        self.link = link
        self.client: AgentClient | None = None
        self.reconfigure(config, creds)

    def reconfigure(self, config, creds: dict) -> None:
        self.config, self.creds = config, creds
        server_config = creds.get("config") or {}
        self.interval = config.effective_interval(server_config)
        self.batch_size = config.effective_batch_size(server_config)
        if self.client is not None:
            self.client.close()
        self.client = AgentClient(
            config.server or creds["server"],
            token=creds["device_token"],
            ca_file=config.ca_file,
            timeout=config.timeout,
            gzip=config.gzip,
        )
        self.buffer.set_limits(config.buffer_max_bytes, config.buffer_max_age)


class Job:
    """A periodic task of the daemon."""

    name = "job"
    due = 0.0

    def run(self, now: float) -> None:
        raise NotImplementedError

    def poke(self, now: float) -> None:
        """Something changed (new samples, new settings): reconsider ``due``."""

    def status(self) -> dict:
        """Fields merged into the status file."""
        return {}

    def shutdown(self) -> None:
        """The daemon is stopping: last words, quickly."""


class SampleJob(Job):
    """Every interval (with jitter), take a sample and queue it."""

    name = "sample"

    def __init__(self, ctx: Context, sampler, on_sample: list[Job]):
        self.ctx, self.sampler, self.on_sample = ctx, sampler, on_sample
        self.due = time.monotonic()  # first sample right away: a quick first report

    def run(self, now: float) -> None:
        try:
            before = self.ctx.buffer.stats()["dropped_total"]
            self.ctx.buffer.append(self.sampler.sample())
            dropped = self.ctx.buffer.stats()["dropped_total"] - before
            if dropped:
                log.warning("buffer full or too old: dropped the %d oldest sample(s)", dropped)
        finally:
            # Anchor on the schedule rather than on now, so the interval does not drift; after a
            # suspend or a long stall, start afresh instead of catching up in a burst.
            step = jittered(self.ctx.interval, self.ctx.config.jitter)
            self.due = self.due + step if self.due + step > now else now + step
        for job in self.on_sample:
            job.poke(now)

    def poke(self, now: float) -> None:
        self.due = min(self.due, now + self.ctx.interval)  # a shorter interval after a reload


class TelemetryJob(Job):
    """Send queued samples: in batches of ``batch_size``; a backlog in larger batches at a bounded
    rate; with backoff while the server is away; acknowledged samples leave the buffer."""

    name = "telemetry"

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.backoff = Backoff(ctx.config.backoff_initial, ctx.config.backoff_max)
        self.not_before = 0.0
        self.first_report = True
        self.split_limit: int | None = None  # batch cap while isolating a refused sample
        self.split_until = 0
        self.due = math.inf
        self.sent_batches = 0

    def poke(self, now: float) -> None:
        ctx = self.ctx
        count = len(ctx.buffer)
        if ctx.link.state == "gone":
            self.due = self.not_before
        elif count == 0:
            self.due = math.inf
        elif self.first_report or count >= ctx.batch_size:
            self.due = max(now, self.not_before)
        else:
            # A partial batch goes out once its oldest sample has waited a whole report period.
            oldest = ctx.buffer.stats()["oldest_ts"] or time.time()
            wait = oldest + ctx.batch_size * ctx.interval - time.time()
            self.due = max(now + max(wait, 0.0), self.not_before)

    def run(self, now: float) -> None:
        self.send_once(now)
        self.poke(time.monotonic())

    def send_once(self, now: float) -> bool:
        """One report attempt; True when the server acknowledged something."""
        ctx = self.ctx
        count = len(ctx.buffer)
        if count == 0:
            return False
        limit = ctx.config.drain_batch_size if count > ctx.batch_size else ctx.batch_size
        if self.split_limit:
            limit = min(limit, self.split_limit)
        rows = ctx.buffer.peek(limit)
        if self.split_limit and rows[0][0] > self.split_until:
            self.split_limit = None  # past the batch that held the refused sample
        stats = ctx.buffer.stats()
        body = (
            f'{{"samples":{render_samples(rows)},"dropped":{stats["dropped"]},'
            f'"dropped_total":{stats["dropped_total"]},"interval_s":{ctx.interval:g},'
            f'"batch_size":{ctx.batch_size}}}'
        )
        try:
            answer = ctx.client.send_telemetry(body)
        except TransportError as exc:
            self._retry_later(now, "offline", str(exc))
            return False
        except ApiError as exc:
            return self._refused(now, exc, rows)
        return self._acknowledged(now, answer, rows, stats["dropped"])

    def _acknowledged(self, now: float, answer: dict, rows, dropped: int) -> bool:
        ctx = self.ctx
        first_seq, last_sent = rows[0][0], rows[-1][0]
        acked = answer.get("acked_seq")
        if not isinstance(acked, int) or isinstance(acked, bool):
            log.warning(
                "telemetry answer has no integer acked_seq (%r); taking the batch as stored", answer
            )
            acked = last_sent
        ctx.link.success()
        self.backoff.reset()
        self.first_report = False
        if acked > ctx.buffer.stats()["last_seq"]:
            # The server knows seqs we never issued: our state dir was reset. Renumber and resend.
            new_last = ctx.buffer.rebase(acked)
            log.warning(
                "server already holds seqs up to %d (state dir reset?): renumbered the "
                "buffer to end at %d",
                acked,
                new_last,
            )
            self.not_before = now
            return True
        removed = ctx.buffer.ack(acked, dropped)
        self.sent_batches += 1
        if acked < first_seq:
            self._retry_later(
                now,
                "ok",
                f"server acknowledged seq {acked}, below the batch {first_seq}..{last_sent}",
            )
            return False
        # Still a backlog: pace the next batch so a fleet coming back does not flatten the server.
        remaining = len(ctx.buffer)
        if remaining >= ctx.batch_size:
            self.not_before = now + jittered(1.0 / ctx.config.drain_rate, 0.2)
            log.debug("sent %d samples, %d left to drain", removed, remaining)
        else:
            self.not_before = now
        return True

    def _refused(self, now: float, exc: ApiError, rows) -> bool:
        ctx = self.ctx
        kind = exc.kind
        if kind in ("pending", "disabled"):
            ctx.link.failure(kind, exc.detail)
            self.not_before = now + jittered(ctx.config.pending_poll, ctx.config.jitter)
        elif kind == "gone":
            ctx.link.failure("gone", exc.detail)
            self.not_before = now + GONE_RECHECK_S
        elif kind == "retry":
            self._retry_later(now, "offline", str(exc), exc.retry_after)
        elif exc.status in (400, 413, 422):
            # The server will never take this batch as it is. Halve it until the culprit stands
            # alone, then give that one sample up (counted as rejected) so it cannot block the rest.
            acked = exc.data.get("acked_seq")
            if isinstance(acked, int) and not isinstance(acked, bool) and acked >= rows[0][0]:
                ctx.buffer.ack(min(acked, rows[-1][0]))
            if len(rows) > 1:
                self.split_limit = max(1, len(rows) // 2)
                self.split_until = rows[-1][0]
                log.warning(
                    "server refused a batch of %d samples (%s); retrying in halves",
                    len(rows),
                    exc.detail,
                )
            else:
                ctx.buffer.reject([rows[0][0]])
                log.error(
                    "server refused sample seq %d for good, dropped it: %s", rows[0][0], exc.detail
                )
            self.not_before = now
        else:
            # 404/405 and the like: a server without this endpoint, or a proxy in the way.
            self._retry_later(now, "offline", str(exc))
        return False

    def _retry_later(self, now: float, state_: str, message: str, retry_after=None) -> None:
        delay = self.backoff.next_delay(retry_after)
        self.ctx.link.failure(state_, f"{message} (retry in {delay:.1f} s)")
        self.not_before = now + delay

    def status(self) -> dict:
        return {
            "consecutive_failures": self.backoff.failures,
            "next_report_in_s": (
                round(max(self.due - time.monotonic(), 0.0), 1) if math.isfinite(self.due) else None
            ),
        }

    def shutdown(self) -> None:
        """One last try, briefly, unless the server has told us not to bother."""
        ctx = self.ctx
        if ctx.link.state in ("gone", "pending", "disabled") or len(ctx.buffer) == 0:
            return
        ctx.client.timeout = min(ctx.client.timeout, 3.0)
        ctx.client.close()
        if self.send_once(time.monotonic()):
            log.info("sent buffered samples before stopping")


class InventoryJob(Job):
    """Report the inventory at start and whenever it changes (checked every
    ``inventory_interval``); the last accepted document is kept in STATE_DIR/inventory.json."""

    name = "inventory"

    def __init__(self, ctx: Context, collect):
        self.ctx = ctx
        self.collect = collect  # models_dir -> dict (probes onnxruntime in a child)
        self.backoff = Backoff(max(ctx.config.backoff_initial, 5.0), ctx.config.backoff_max)
        self.path = f"{ctx.config.state_dir}/{state.INVENTORY}"
        self.document: dict | None = None
        self.collected_at = -math.inf
        self.sent_at: float | None = None
        self.due = time.monotonic() + 1.0  # after the first sample: the probe takes a moment

    def run(self, now: float) -> None:
        ctx = self.ctx
        if self.document is None or now - self.collected_at >= ctx.config.inventory_interval:
            self.document = self.collect(ctx.config.effective_models_dir)
            self.collected_at = now
            previous = _read_sent(self.path, ctx.creds["device_id"])
            if self.sent_at is not None and previous == self.document:
                self.due = now + ctx.config.inventory_interval
                return  # sent at start and unchanged since
        if ctx.link.state == "gone":
            self.due = now + GONE_RECHECK_S
            return
        try:
            ctx.client.put_inventory(self.document)
        except TransportError as exc:
            self.due = now + self.backoff.next_delay()
            log.debug("inventory not sent: %s", exc)
            return
        except ApiError as exc:
            if exc.kind in ("pending", "disabled"):
                ctx.link.failure(exc.kind, exc.detail)
                self.due = now + jittered(ctx.config.pending_poll, ctx.config.jitter)
            elif exc.kind == "gone":
                ctx.link.failure("gone", exc.detail)
                self.due = now + GONE_RECHECK_S
            elif exc.kind == "retry":
                self.due = now + self.backoff.next_delay(exc.retry_after)
            else:
                log.warning(
                    "inventory refused: %s; trying again in %.0f s",
                    exc,
                    ctx.config.inventory_interval,
                )
                self.due = now + ctx.config.inventory_interval
            return
        self.backoff.reset()
        self.sent_at = time.time()
        state.write_json_atomic(
            self.path,
            {
                "device_id": ctx.creds["device_id"],
                "sent_at": self.sent_at,
                "inventory": self.document,
            },
        )
        log.info("inventory reported")
        self.due = now + ctx.config.inventory_interval

    def poke(self, now: float) -> None:
        if self.sent_at is None:
            self.due = min(self.due, now)

    def status(self) -> dict:
        return {"inventory_sent_at": self.sent_at}


def _read_sent(path: str, device_id: str) -> dict | None:
    try:
        sent = state.read_json(path)
    except state.StateError:
        return None
    if sent and sent.get("device_id") == device_id:
        return sent.get("inventory")
    return None


class CredentialsWatchJob(Job):
    """Notice a new enrollment (``enroll --force`` while running) and switch to it."""

    name = "credentials"

    def __init__(self, ctx: Context, on_change, every: float = 30.0):
        self.ctx, self.on_change, self.every = ctx, on_change, every
        self.path = state.credentials_path(ctx.config.state_dir)
        self.mtime = self._mtime()
        self.due = time.monotonic() + every

    def _mtime(self) -> float | None:
        try:
            return os.stat(self.path).st_mtime
        except OSError:
            return None

    def run(self, now: float) -> None:
        self.due = now + self.every
        mtime = self._mtime()
        if mtime != self.mtime:
            self.mtime = mtime
            log.info("credentials changed on disk: reloading")
            self.on_change()
