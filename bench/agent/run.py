"""Device agent benchmark: the real ``edgefleet-agent run`` against a real local EdgeFleet server.

Usage (see README.md beside this file):

    .venv/bin/python bench/agent/run.py [--duration 300] [--interval SECONDS] [--no-node-exporter]

What it does, all on loopback and in a throwaway directory under /tmp:

1. a fresh SQLite database (``EDGEFLEET_VAR_DIR`` points there): ``manage.py migrate``,
   ``manage.py create_enrollment_token --auto-accept``, then gunicorn on a free port;
2. ``edgefleet-agent enroll`` (``python -m agents enroll`` when the console script is not
   installed: the same entry point), then ``edgefleet-agent run`` as a child process for
   ``--duration`` seconds at the server's interval (10 s) unless ``--interval`` is given;
3. at the same moment, the baselines, for the same duration: the interpreter floor
   (``python -c 'import time; time.sleep(...)'``), the interpreter with the modules the agent
   cannot do without (psutil, sqlite3, json, logging), and Prometheus node_exporter when it is
   installed (``apt-get install prometheus-node-exporter``), scraped every 10 s by this script;
4. every second, with psutil: each process's RSS and CPU time. CPU time counts the children a
   process has reaped (the agent's onnxruntime probe at start-up runs in a child). Per-window
   CPU figures use ``/proc/PID/task/*/schedstat`` (nanoseconds) because psutil's clock ticks
   (10 ms) are coarser than what the agent uses in one interval;
5. the time to the first report: from just before the agent process is started to the first
   telemetry row visible in the server's database (polled every 20 ms);
6. after a clean stop (SIGTERM: one last report), samples stored against samples expected
   (1 + duration / interval) and against the samples the agent took (its last seq), with a
   check that the stored seqs have no gap and no duplicate.

It prints a markdown report on stdout and writes it, with the raw JSON, to ``--out`` (default:
the throwaway directory, which is kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
PY = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
MIB = 2**20
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def sh(*cmd: str, env: dict, cwd=REPO) -> str:
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def http_get(port: int, path: str) -> int:
    """A plain HTTP/1.0 GET; the number of body bytes read (a scrape, like Prometheus's)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\n\r\n".encode())
        total = 0
        while chunk := sock.recv(65536):
            total += len(chunk)
        return total


def schedstat_ns(pid: int) -> int | None:
    """CPU time of all live threads of ``pid`` in nanoseconds (None when not readable)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                total += int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total


class Watched:
    """One process under measurement: 1 s samples of RSS and CPU."""

    def __init__(self, label: str, popen: subprocess.Popen, started_wall: float, note: str = ""):
        self.label, self.popen, self.started, self.note = label, popen, started_wall, note
        self.proc = psutil.Process(popen.pid)
        self.samples: list[tuple[float, int, float, int | None]] = []  # (t since start, rss, cpu s, ns)
        self.full: dict | None = None

    def sample(self, now: float) -> None:
        try:
            with self.proc.oneshot():
                rss = self.proc.memory_info().rss
                t = self.proc.cpu_times()
            cpu = t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            return
        self.samples.append((now - self.started, rss, cpu, schedstat_ns(self.popen.pid)))

    def snapshot_full(self) -> None:
        try:
            m = self.proc.memory_full_info()
            self.full = {"pss": m.pss, "uss": m.uss}
        except (psutil.Error, AttributeError):
            self.full = None

    def stop(self, sig=signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def summary(self, window: float) -> dict:
        s = self.samples
        rss = [x[1] for x in s]
        wall = s[-1][0]
        cpu_total = s[-1][2]  # since the process started: start-up included
        # Per-window figures (window = the agent's interval), from schedstat where available.
        per_window = []
        edge, prev = window, None
        for t, _, cpu_s, ns in s:
            value = ns / 1e9 if ns is not None else cpu_s
            if prev is None:
                prev = (t, value)
                continue
            if t >= edge:
                per_window.append((value - prev[1]) / (t - prev[0]))
                prev = (t, value)
                edge = t + window
        steady = [x for x in s if x[0] >= 60.0]
        after_60 = None
        if len(steady) >= 2:
            a, b = steady[0], steady[-1]
            va = a[3] / 1e9 if a[3] is not None and b[3] is not None else a[2]
            vb = b[3] / 1e9 if a[3] is not None and b[3] is not None else b[2]
            after_60 = (vb - va) / (b[0] - a[0])
        return {
            "label": self.label,
            "note": self.note,
            "pid": self.popen.pid,
            "samples": len(s),
            "wall_s": round(wall, 1),
            "rss_median_mib": round(statistics.median(rss) / MIB, 2),
            "rss_max_mib": round(max(rss) / MIB, 2),
            "rss_last_mib": round(rss[-1] / MIB, 2),
            "pss_mib": round(self.full["pss"] / MIB, 2) if self.full else None,
            "uss_mib": round(self.full["uss"] / MIB, 2) if self.full else None,
            "cpu_seconds": round(cpu_total, 3),
            "cpu_pct_total": round(100 * cpu_total / wall, 4),
            "cpu_pct_median_window": round(100 * statistics.median(per_window), 4) if per_window else None,
            "cpu_pct_after_60s": round(100 * after_60, 4) if after_60 is not None else None,
            "windows": len(per_window),
        }


def fmt(v, unit: str = "", digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}{unit}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=300.0, help="seconds the agent runs (default 300)")
    ap.add_argument("--interval", type=float, default=None,
                    help="agent sampling interval in seconds (default: the server's, 10 s)")
    ap.add_argument("--scrape-interval", type=float, default=10.0, help="node_exporter scrape interval")
    ap.add_argument("--workers", type=int, default=1, help="gunicorn workers (one agent needs one)")
    ap.add_argument("--no-node-exporter", action="store_true", help="skip the node_exporter anchor")
    ap.add_argument("--agent-src", default=None,
                    help="run the agent package from this directory instead of the checkout (a "
                         "before/after comparison); the server always runs from the checkout")
    ap.add_argument("--out", default=None, help="directory for agent.md and agent.json (default: the run dir)")
    args = ap.parse_args()

    run_dir = Path(tempfile.mkdtemp(prefix="agentbench-", dir="/tmp"))
    var_dir, state_dir = run_dir / "var", run_dir / "agent-state"
    var_dir.mkdir()
    out_dir = Path(args.out) if args.out else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    server_env = {k: v for k, v in os.environ.items()
                  if not k.startswith(("EDGEFLEET_", "DATABASE_URL", "REDIS_URL", "DJANGO_"))}
    server_env.update({"EDGEFLEET_VAR_DIR": str(var_dir), "DEBUG": "0", "LOG_LEVEL": "WARNING"})
    agent_env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEFLEET_", "DJANGO_"))}
    src = str(Path(args.agent_src).resolve()) if args.agent_src else None
    agent_env["PYTHONPATH"] = os.pathsep.join(p for p in (src, str(REPO), agent_env.get("PYTHONPATH")) if p)
    agent_env["EDGEFLEET_AGENT_CONFIG"] = ""  # never pick up /etc/edgefleet-agent/agent.toml
    installed = shutil.which("edgefleet-agent")
    agent_cmd = [installed] if installed and not src else [PY, "-m", "agents"]
    db_path = var_dir / "edgefleet.sqlite3"

    print(f"== run dir {run_dir}", file=sys.stderr, flush=True)
    sh(PY, "manage.py", "migrate", "-v0", env=server_env)
    token = sh(PY, "manage.py", "create_enrollment_token", "--auto-accept", "--label", "bench=agent",
               env=server_env).strip().splitlines()[-1]
    port = free_port()
    server_url = f"http://127.0.0.1:{port}"
    gunicorn_bin = REPO / ".venv" / "bin" / "gunicorn"
    server_cmd = ([str(gunicorn_bin), "edgefleet.wsgi", "-b", f"127.0.0.1:{port}", "-w", str(args.workers)]
                  if gunicorn_bin.exists() else [PY, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"])
    server_log = open(run_dir / "server.log", "w")  # noqa: SIM115
    server = subprocess.Popen(server_cmd, env=server_env, cwd=REPO, stdout=server_log, stderr=subprocess.STDOUT)
    watched: list[Watched] = []
    node_port = None
    try:
        wait_port(port)
        # Warm the server up (Django imports views and the URLconf on its first request) so the
        # time to the first report measures the agent, not a cold server.
        for _ in range(3 * args.workers):
            http_get(port, "/api/v1/agent/desired-state")
        enroll = sh(*agent_cmd, "enroll", "--server", server_url, "--state-dir", str(state_dir),
                    "--name", "bench-agent", env={**agent_env, "EDGEFLEET_AGENT_ENROLLMENT_TOKEN": token})
        print(f"== enrolled: {enroll.strip()}", file=sys.stderr, flush=True)
        creds = json.loads((state_dir / "credentials.json").read_text())
        interval = args.interval or float((creds.get("config") or {}).get("telemetry_interval_s") or 10.0)
        sleep_for = str(int(args.duration + 120))

        # The baselines first (they are not timed), then the agent: all run side by side.
        def spawn(label, cmd, note="", **kw):
            t = time.time()
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
            w = Watched(label, p, t, note)
            watched.append(w)
            return w

        spawn("python -c 'import time; time.sleep(…)'", [PY, "-c", f"import time; time.sleep({sleep_for})"],
              "interpreter floor")
        spawn("python + psutil, sqlite3, json, logging",
              [PY, "-c", f"import json, logging, sqlite3, time, psutil; psutil.cpu_percent(); time.sleep({sleep_for})"],
              "floor with the agent's unavoidable imports")
        node_version = None
        if NODE_EXPORTER and not args.no_node_exporter:
            ver = subprocess.run([NODE_EXPORTER, "--version"], capture_output=True, text=True)
            node_version = ((ver.stdout + ver.stderr).strip().splitlines() or ["node_exporter"])[0]
            node_port = free_port()
            spawn("node_exporter", [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{node_port}"],
                  f"{node_version}, default collectors, scraped every {args.scrape_interval:g} s")
            wait_port(node_port, 20)
        agent_flags = ["--state-dir", str(state_dir)] + (["--interval", f"{args.interval}s"] if args.interval else [])
        agent_log = open(run_dir / "agent.log", "w")  # noqa: SIM115
        t0 = time.time()
        agent_popen = subprocess.Popen([*agent_cmd, "run", *agent_flags], stdout=agent_log,
                                       stderr=subprocess.STDOUT, env=agent_env, cwd=str(run_dir))
        agent = Watched("edgefleet-agent run", agent_popen, t0,
                        f"http, interval {interval:g} s" + (f", from {src}" if src else ""))
        watched.append(agent)

        psutil.cpu_percent(None)  # machine-wide busy %, from here to the end of the run
        load_start = os.getloadavg()[0]
        db = None
        first_report = None
        next_sample = next_scrape = time.time()
        scrapes = scrape_errors = 0
        end = t0 + args.duration
        while True:
            now = time.time()
            if now >= end:
                break
            if agent_popen.poll() is not None:
                raise SystemExit(f"the agent exited early ({agent_popen.returncode}); see {run_dir / 'agent.log'}")
            if first_report is None and now - t0 > 60:
                st = json.loads((state_dir / "status.json").read_text() or "{}")
                raise SystemExit(f"no telemetry stored 60 s after the agent started; the agent says: "
                                 f"{st.get('last_error')!r}; see {run_dir / 'server.log'}")
            if first_report is None:
                try:
                    if db is None and db_path.exists():
                        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1)
                    if db is not None and db.execute("SELECT 1 FROM fleet_telemetrysample LIMIT 1").fetchone():
                        first_report = time.time() - t0
                        print(f"== first report stored {first_report:.3f}s after the agent started",
                              file=sys.stderr, flush=True)
                except sqlite3.Error:
                    pass
            if now >= next_sample:
                for w in watched:
                    w.sample(now)
                next_sample += 1.0
            if node_port and now >= next_scrape:
                try:
                    http_get(node_port, "/metrics")
                    scrapes += 1
                except OSError:
                    scrape_errors += 1
                next_scrape += args.scrape_interval
            wake = min(next_sample, next_scrape if node_port else next_sample, end)
            time.sleep(max(0.0, min(wake - time.time(), 0.02 if first_report is None else 1.0)))
        machine_busy = psutil.cpu_percent(None)
        load_end = os.getloadavg()[0]
        for w in watched:
            w.sample(time.time())
            w.snapshot_full()

        status = json.loads((state_dir / "status.json").read_text())
        t_stop = time.monotonic()
        agent.stop()
        stop_s = time.monotonic() - t_stop
        for w in watched[:-1]:
            w.stop(signal.SIGTERM)
        final = json.loads((state_dir / "status.json").read_text())
        if db is None:
            db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
        count, lo, hi, distinct = db.execute(
            "SELECT count(*), min(seq), max(seq), count(DISTINCT seq) FROM fleet_telemetrysample").fetchone()
        rss_reported = db.execute("SELECT agent_rss_bytes FROM fleet_telemetrysample ORDER BY seq").fetchall()
        db.close()
    finally:
        for w in watched:
            if w.popen.poll() is None:
                w.popen.kill()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

    rows = [w.summary(interval) for w in watched]
    a = rows[-1]
    # Samples fall at start-up + k × interval (± jitter): count those before the stop.
    first_at = first_report if first_report is not None else 0.0
    expected = 1 + int(max(args.duration - first_at, 0.0) // interval)
    agent_rows = {
        "time_to_first_report_s": round(first_report, 3) if first_report is not None else None,
        "interval_s": interval,
        "batch_size": final.get("batch_size"),
        "samples_expected": expected,
        "samples_taken": final.get("last_seq"),
        "samples_stored": count,
        "stored_seq_range": [lo, hi],
        "stored_seqs_gap_free": bool(count) and distinct == count == hi - lo + 1,
        "acked_seq": final.get("acked_seq"),
        "buffered_after_stop": final.get("buffered"),
        "dropped_total": final.get("dropped_total"),
        "rejected_total": final.get("rejected_total"),
        "last_error": final.get("last_error"),
        "stop_seconds": round(stop_s, 2),
        "exit_code": agent_popen.returncode,
        "status_rss_mib_before_stop": round(status.get("rss_bytes", 0) / MIB, 2),
        "self_reported_rss_mib_median": (round(statistics.median(r[0] for r in rss_reported if r[0]) / MIB, 2)
                                         if any(r[0] for r in rss_reported) else None),
        "node_exporter_scrapes": scrapes if node_port else None,
        "node_exporter_scrape_errors": scrape_errors if node_port else None,
    }
    goals = {
        "rss_le_20mib": a["rss_max_mib"] <= 20.0,
        "cpu_le_0.2pct_total": a["cpu_pct_total"] <= 0.2,
        "cpu_le_0.2pct_median_window": (a["cpu_pct_median_window"] or 0) <= 0.2,
    }
    machine = (f"{platform.machine()}, {psutil.cpu_count()} cores, Python {platform.python_version()}, "
               f"psutil {psutil.__version__}, {platform.system()} {platform.release()}")
    result = {"args": vars(args), "machine": machine, "load_1m_start_end": [load_start, load_end],
              "machine_busy_pct": machine_busy, "server": server_cmd[0].rsplit("/", 1)[-1],
              "agent_cmd": " ".join(agent_cmd), "processes": rows, "agent": agent_rows, "goals": goals,
              "node_exporter": node_version if node_port else (
                  "not installed" if not NODE_EXPORTER else "skipped (--no-node-exporter)")}

    md = [f"Duration {args.duration:g} s, agent interval {interval:g} s, {machine}; server: "
          f"{result['server']} on SQLite (loopback). CPU is % of one core; \"total\" is all CPU time "
          f"since the process started (start-up and reaped children included) over wall time, "
          f"\"median / {interval:g} s\" the median of per-{interval:g}-s windows, \"after 60 s\" the mean "
          f"from 60 s to the end. Machine during the run: {machine_busy:.0f} % busy (all cores), "
          f"load average {load_start:.1f} → {load_end:.1f}.", "",
          "| process | RSS median | RSS max | PSS | USS | CPU total | CPU median / "
          f"{interval:g} s | CPU after 60 s | note |",
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        md.append(f"| {r['label']} | {fmt(r['rss_median_mib'], ' MiB', 1)} | {fmt(r['rss_max_mib'], ' MiB', 1)} | "
                  f"{fmt(r['pss_mib'], ' MiB', 1)} | {fmt(r['uss_mib'], ' MiB', 1)} | {fmt(r['cpu_pct_total'], ' %')} | "
                  f"{fmt(r['cpu_pct_median_window'], ' %')} | {fmt(r['cpu_pct_after_60s'], ' %')} | {r['note']} |")
    if not node_port:
        md.append(f"| node_exporter | — | — | — | — | — | — | — | {result['node_exporter']} |")
    md += ["", "| agent | value |", "| --- | --- |",
           f"| time to first report (process start → first row in the server's DB) | "
           f"{fmt(agent_rows['time_to_first_report_s'], ' s', 2)} |",
           f"| samples stored / expected (one at start, then one per interval; ±1 for jitter) | {count} / {expected} |",
           f"| samples taken by the agent (last seq) / acknowledged | {agent_rows['samples_taken']} / "
           f"{agent_rows['acked_seq']} |",
           f"| stored seqs gap-free, no duplicates | {'yes' if agent_rows['stored_seqs_gap_free'] else 'NO'} |",
           f"| buffered after stop / dropped / rejected | {agent_rows['buffered_after_stop']} / "
           f"{agent_rows['dropped_total']} / {agent_rows['rejected_total']} |",
           f"| clean stop (SIGTERM → exit {agent_rows['exit_code']}) | {agent_rows['stop_seconds']} s |",
           f"| RSS the agent reported about itself (median of stored samples) | "
           f"{fmt(agent_rows['self_reported_rss_mib_median'], ' MiB', 1)} |", "",
           "Goals (issue 3): RSS ≤ 20 MiB: " + ("**met**" if goals["rss_le_20mib"] else "**not met**")
           + f" (max {a['rss_max_mib']:.2f} MiB); CPU ≤ 0.2 % of a core at a {interval:g} s interval: "
           + ("**met**" if goals["cpu_le_0.2pct_total"] else "**not met**") + f" counting start-up "
           f"({a['cpu_pct_total']:.3f} %), " + ("**met**" if goals["cpu_le_0.2pct_median_window"] else "**not met**")
           + f" in steady state (median window {fmt(a['cpu_pct_median_window'], ' %')})."]
    text = "\n".join(md) + "\n"
    (out_dir / "agent.md").write_text(text)
    (out_dir / "agent.json").write_text(json.dumps(result, indent=2) + "\n")
    print(text)
    print(f"== raw results in {out_dir / 'agent.json'}; logs in {run_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
