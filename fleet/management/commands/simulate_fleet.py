"""``manage.py simulate_fleet``: N virtual agents in one process (see fleet.simulator)."""

from __future__ import annotations

import json
import os
import uuid

from django.core.management.base import BaseCommand, CommandError

from fleet import simulator


class Command(BaseCommand):
    help = ("Run N virtual devices that enroll and report telemetry over the real agent protocol. "
            "Prints progress and a summary (sent, acknowledged, errors, p50/p99 latency).")
    requires_system_checks: list = []

    def add_arguments(self, parser):
        parser.add_argument("--server", required=True, help="Server base URL, e.g. http://127.0.0.1:8000")
        parser.add_argument("--devices", type=int, default=5, help="Number of virtual devices")
        parser.add_argument("--interval", type=float, default=None,
                            help="Sampling interval in seconds (default: the server's telemetry_interval_s, "
                                 "as answered at enrollment); 0: send as fast as the server takes it")
        parser.add_argument("--duration", type=float, default=0,
                            help="Stop after this many seconds (default: run until interrupted)")
        parser.add_argument("--token", help="Enrollment token (auto-accept), or $EDGEFLEET_ENROLLMENT_TOKEN")
        parser.add_argument("--batch", type=int, default=0,
                            help="Samples per report (default: the server's batch_size, as answered at "
                                 "enrollment, like the agent; 3 if it gives none)")
        parser.add_argument("--threads", type=int, default=0,
                            help="Sender threads, one keep-alive connection each (default: min(devices, 16))")
        parser.add_argument("--prefix", default="sim", help="Device names and fingerprints start with this")
        parser.add_argument("--credentials", help="JSON file that keeps the devices' tokens between runs")
        parser.add_argument("--json", action="store_true", help="Print the summary as one JSON document")
        parser.add_argument("--progress", type=float, default=10.0, help="Seconds between progress lines")

    def handle(self, *args, **opts):
        if opts["devices"] < 1:
            raise CommandError("--devices must be at least 1")
        log = self.stderr.write if opts["json"] else self.stdout.write
        devices = [simulator.VirtualDevice(index=i) for i in range(opts["devices"])]
        path = opts["credentials"]
        if path and os.path.exists(path):
            with open(path) as fh:
                saved = json.load(fh)
            for d in devices:
                creds = saved.get(str(d.index))
                if creds:
                    d.device_id, d.token = creds
        threads = opts["threads"] or min(opts["devices"], 16)
        token = opts["token"] or os.environ.get("EDGEFLEET_ENROLLMENT_TOKEN")
        if any(not d.token for d in devices):
            if not token:
                raise CommandError("an enrollment token is needed (--token) for devices not yet enrolled")
            log(f"enrolling {sum(1 for d in devices if not d.token)} virtual devices with {opts['server']} ...")
            failed = simulator.enroll_all(opts["server"], token, devices, opts["prefix"], threads, log=log)
            devices = [d for d in devices if d.token]
            if not devices:
                raise CommandError(f"no device could enroll ({failed} failures)")
            if path:
                tmp = f"{path}.{uuid.uuid4().hex}.tmp"
                with open(tmp, "w") as fh:
                    json.dump({str(d.index): [d.device_id, d.token] for d in devices}, fh)
                os.replace(tmp, path)
        if opts["interval"] is not None and opts["interval"] < 0:
            raise CommandError("--interval must be >= 0")
        config = {}
        if opts["interval"] is None or not opts["batch"]:
            config = simulator.server_config(opts["server"], devices)
        interval, batch = simulator.reporting_settings(config, opts["interval"], opts["batch"])
        duration = opts["duration"] or 10 * 365 * 86400.0
        log(f"{len(devices)} devices reporting every {interval * batch:g}s "
            f"({batch} samples of {interval:g}s) over {threads} connections")
        try:
            stats, elapsed = simulator.run_fleet(
                opts["server"], devices, interval=interval, batch=batch, duration=duration,
                threads=threads, progress_every=opts["progress"], log=log)
        except KeyboardInterrupt:
            return
        result = simulator.summary(stats, elapsed)
        if opts["json"]:
            self.stdout.write(json.dumps(result))
        else:
            lat = result["latency_ms"]
            self.stdout.write(
                f"sent {result['samples_sent']} samples in {result['requests']} requests over "
                f"{result['elapsed_s']}s; acknowledged {result['samples_acked']} "
                f"({result['samples_per_s']}/s); errors {result['errors'] or 'none'}; "
                f"latency p50 {lat['p50']} ms, p99 {lat['p99']} ms")
