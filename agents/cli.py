"""``edgefleet-agent``: enroll this device, run the daemon, show what it knows.

Exit codes: 0 success; 1 error (message on stderr); 2 bad usage; 3 ``status`` on a device that is
not enrolled; 78 ``run`` on a device that is not enrolled (the systemd unit does not restart then).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from agents import __version__, state
from agents.config import (
    DEFAULT_CONFIG_FILE,
    DEFAULT_STATE_DIR,
    ENV_PREFIX,
    SETTINGS,
    ConfigError,
    env_name,
    flag_name,
    load_config,
)

EXIT_NOT_ENROLLED_STATUS = 3

_EPILOG = f"""\
Settings come from, in increasing precedence: built-in defaults, the TOML config file
(--config, ${ENV_PREFIX}CONFIG, else {DEFAULT_CONFIG_FILE} if it exists), environment
variables {ENV_PREFIX}<SETTING> (e.g. {ENV_PREFIX}INTERVAL=30s), then command-line flags.
Durations take s/m/h/d suffixes (default seconds); sizes take KiB/MiB/GiB (default bytes).
"""


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``, without importing shutil."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter, told the width so that it does not ``import shutil`` to learn it.
    argparse makes a formatter for every ``add_argument``, so even ``run`` would import shutil,
    which brings bz2 and lzma: half a MiB of RSS the daemon would carry for nothing."""

    def __init__(self, prog, indent_increment=2, max_help_position=24, width=None):
        if width is None:
            width = _terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def _wrap(text: str) -> str:
    import textwrap

    return textwrap.fill(text, width=88)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help=f"directory for credentials, buffer and status (default {DEFAULT_STATE_DIR}, "
        f"or ${env_name('state_dir')})",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML config file (default ${ENV_PREFIX}CONFIG, else {DEFAULT_CONFIG_FILE} if present)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgefleet-agent",
        description=_wrap(
            "The EdgeFleet device agent: reports this device's health and inventory to "
            "an EdgeFleet server."
        ),
        epilog=_EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"edgefleet-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    enroll = sub.add_parser(
        "enroll",
        help="register this device with a server and store its credentials",
        description=_wrap(
            "Register this device with an EdgeFleet server using an enrollment token, "
            "and store the device credentials in the state directory (file mode 0600). "
            "Enrolling again (e.g. after the token was revoked) needs --force."
        ),
        epilog=_EPILOG,
        formatter_class=_Formatter,
    )
    enroll.add_argument(
        "--server",
        required=True,
        metavar="URL",
        help="the server's base URL, e.g. https://edgefleet.example.com",
    )
    enroll.add_argument(
        "--token",
        metavar="TOKEN",
        help=f"the enrollment token an operator created (or "
        f"${ENV_PREFIX}ENROLLMENT_TOKEN, which keeps it out of `ps`)",
    )
    enroll.add_argument(
        "--name",
        metavar="NAME",
        help="the device's display name on the server (default: the hostname)",
    )
    enroll.add_argument(
        "--ca-file",
        metavar="FILE",
        help="PEM bundle of CAs to trust for HTTPS (default: the system's)",
    )
    enroll.add_argument("--timeout", metavar="DURATION", help="HTTP timeout (default 10s)")
    enroll.add_argument(
        "--force", action="store_true", help="replace existing credentials in the state directory"
    )
    _common(enroll)

    run = sub.add_parser(
        "run",
        help="run the daemon in the foreground (what the systemd unit starts)",
        description=_wrap(
            "Sample the device's health every interval, buffer the samples on disk and "
            "report them in batches; report the inventory at start and when it changes. "
            "SIGTERM/SIGINT stop cleanly, SIGHUP reloads the config file and credentials."
        ),
        epilog=_EPILOG,
        formatter_class=_Formatter,
    )
    _common(run)
    for setting in SETTINGS:
        if setting.name == "state_dir":
            continue
        run.add_argument(
            flag_name(setting.name),
            dest=setting.name,
            metavar=setting.metavar,
            help=f"{setting.help} [${env_name(setting.name)}]",
        )

    status = sub.add_parser(
        "status",
        help="print what the agent knows: server, device, last report, buffer",
        description=_wrap(
            "Print the server, the device id and status, whether the daemon runs, the "
            "last successful report, and the buffered and dropped sample counts. Exit "
            "code 3 when the device is not enrolled."
        ),
        epilog=_EPILOG,
        formatter_class=_Formatter,
    )
    _common(status)
    status.add_argument("--json", action="store_true", help="print one JSON document instead")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "enroll":
            return cmd_enroll(args)
        if args.command == "run":
            return cmd_run(args)
        return cmd_status(args)
    except ConfigError as exc:
        print(f"edgefleet-agent: {exc}", file=sys.stderr)
        return 2
    except (state.StateError, OSError) as exc:
        print(f"edgefleet-agent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _flags(args: argparse.Namespace) -> dict:
    return {s.name: getattr(args, s.name, None) for s in SETTINGS}


# --- enroll -------------------------------------------------------------------------------------


def cmd_enroll(args: argparse.Namespace) -> int:
    from agents.client import AgentClient, ApiError, TransportError
    from agents.inventory import collect, fingerprint

    config = load_config(_flags(args), args.config)
    token = args.token or os.environ.get(ENV_PREFIX + "ENROLLMENT_TOKEN")
    if not token:
        print(
            "edgefleet-agent: an enrollment token is needed (--token or "
            f"${ENV_PREFIX}ENROLLMENT_TOKEN)",
            file=sys.stderr,
        )
        return 2
    existing = state.load_credentials(config.state_dir) if os.path.isdir(config.state_dir) else None
    if existing and not args.force:
        print(
            f"edgefleet-agent: already enrolled as device {existing['device_id']} with "
            f"{existing['server']}; use --force to enroll again",
            file=sys.stderr,
        )
        return 1
    state.ensure_state_dir(config.state_dir)
    try:
        client = AgentClient(args.server, ca_file=config.ca_file, timeout=config.timeout)
    except ValueError as exc:
        print(f"edgefleet-agent: {exc}", file=sys.stderr)
        return 2
    name = args.name or _hostname()
    print(f"collecting inventory and enrolling with {client.server} ...", file=sys.stderr)
    inventory = collect(config.effective_models_dir)
    device_fingerprint = fingerprint()
    try:
        answer = client.enroll(token, name, device_fingerprint, inventory)
    except TransportError as exc:
        print(f"edgefleet-agent: cannot reach the server: {exc}", file=sys.stderr)
        return 1
    except ApiError as exc:
        print(
            f"edgefleet-agent: enrollment refused (HTTP {exc.status}): {exc.detail}",
            file=sys.stderr,
        )
        return 1
    finally:
        client.close()
    if not answer.get("device_id") or not answer.get("device_token"):
        print(
            f"edgefleet-agent: the server's answer lacks device_id/device_token: {answer}",
            file=sys.stderr,
        )
        return 1
    creds = {
        "server": client.server,
        "device_id": str(answer["device_id"]),
        "device_token": answer["device_token"],
        "status": answer.get("status", "unknown"),
        "name": name,
        "fingerprint": device_fingerprint,
        "config": answer.get("config") or {},
        "enrolled_at": time.time(),
    }
    path = state.save_credentials(config.state_dir, creds)
    _hand_over(config.state_dir, path)
    print(f"device id: {creds['device_id']}")
    print(f"status:    {creds['status']}")
    if creds["status"] == "pending":
        print(
            "An operator must accept this device; the agent can run meanwhile and will "
            "report once accepted."
        )
    print(
        f"credentials stored in {path} (mode 0600). Start the agent: "
        "systemctl enable --now edgefleet-agent (or: edgefleet-agent run)"
    )
    return 0


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _hand_over(state_dir: str, path: str) -> None:
    """Run as root for a state dir that belongs to the service user: give the file to that user,
    or the daemon could not read its own credentials."""
    if os.geteuid() != 0:
        return
    st = os.stat(state_dir)
    if st.st_uid != 0:
        os.chown(path, st.st_uid, st.st_gid)


# --- run ----------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from agents.daemon import run_daemon

    flags = _flags(args)
    config = load_config(flags, args.config)
    return run_daemon(config, flags, args.config)


# --- status -------------------------------------------------------------------------------------


def collect_status(state_dir: str) -> dict:
    """Everything `status` prints, from the credentials, the status file and the buffer."""
    from agents.buffer import open_readonly_stats

    creds = state.load_credentials(state_dir) if os.path.isdir(state_dir) else None
    doc: dict = {"state_dir": state_dir, "enrolled": creds is not None}
    if creds is None:
        return doc
    live = state.read_status(state_dir) or {}
    if live.get("device_id") != creds["device_id"]:
        live = {}
    running = state.agent_running(state_dir)
    doc.update(
        server=live.get("server") or creds["server"],
        device_id=creds["device_id"],
        name=creds.get("name"),
        status_at_enrollment=creds.get("status"),
        agent_running=running,
        pid=live.get("pid") if running else None,
        link=live.get("link") if running else None,
        last_report_at=live.get("last_report_at"),
        last_error=live.get("last_error"),
        last_error_at=live.get("last_error_at"),
        status_updated_at=live.get("updated_at"),
        interval_s=live.get("interval_s"),
        batch_size=live.get("batch_size"),
        rss_bytes=live.get("rss_bytes") if running else None,
    )
    try:
        stats = open_readonly_stats(os.path.join(state_dir, state.BUFFER))
    except Exception as exc:  # noqa: BLE001 - sqlite3.Error and friends: show, do not crash
        stats, doc["buffer_error"] = None, str(exc)
    if stats is None:  # no buffer yet, or unreadable: fall back on the daemon's last word
        stats = {
            "count": live.get("buffered", 0),
            "bytes": live.get("buffered_bytes", 0),
            "dropped": live.get("dropped_unreported", 0),
            "dropped_total": live.get("dropped_total", 0),
            "rejected_total": live.get("rejected_total", 0),
            "oldest_ts": live.get("oldest_buffered_ts"),
            "last_seq": live.get("last_seq"),
            "acked_seq": live.get("acked_seq"),
        }
    doc.update(
        buffered=stats["count"],
        buffered_bytes=stats["bytes"],
        oldest_buffered_ts=stats["oldest_ts"],
        dropped_unreported=stats["dropped"],
        dropped_total=stats["dropped_total"],
        rejected_total=stats["rejected_total"],
        last_seq=stats["last_seq"],
        acked_seq=stats["acked_seq"],
    )
    return doc


def _ago(ts: float | None) -> str:
    if not ts:
        return "never"
    seconds = max(time.time() - ts, 0)
    if seconds < 120:
        span = f"{seconds:.0f} s"
    elif seconds < 7200:
        span = f"{seconds / 60:.0f} min"
    elif seconds < 172800:
        span = f"{seconds / 3600:.1f} h"
    else:
        span = f"{seconds / 86400:.1f} days"
    return f"{state.iso(ts)} ({span} ago)"


_LINK_TEXT = {
    "ok": "ok: reports are accepted",
    "offline": "offline: no answer from the server, buffering and retrying",
    "pending": "pending: waiting for an operator to accept this device",
    "disabled": "disabled by an operator: buffering, asking again now and then",
    "gone": "REFUSED: token revoked or device rejected/removed; enroll again with --force",
    "unknown": "unknown (nothing sent yet)",
}


def cmd_status(args: argparse.Namespace) -> int:
    config = load_config({"state_dir": args.state_dir}, args.config)
    doc = collect_status(config.state_dir)
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0 if doc["enrolled"] else EXIT_NOT_ENROLLED_STATUS
    if not doc["enrolled"]:
        print(f"not enrolled: no credentials in {config.state_dir}")
        print("enroll with: edgefleet-agent enroll --server URL --token TOKEN")
        return EXIT_NOT_ENROLLED_STATUS
    running = {
        True: f"running (pid {doc['pid']})" if doc["pid"] else "running",
        False: "not running",
        None: "unknown",
    }[doc["agent_running"]]
    link = doc["link"] or "unknown"
    link_text = (
        _LINK_TEXT.get(link, link) if doc["agent_running"] else "unknown (agent not running)"
    )
    rows = [
        ("server", doc["server"]),
        ("device id", doc["device_id"] + (f" ({doc['name']})" if doc.get("name") else "")),
        ("server link", link_text),
        ("status at enrollment", str(doc["status_at_enrollment"])),
        ("agent", running),
        ("last report", _ago(doc["last_report_at"])),
        (
            "buffered samples",
            f"{doc['buffered']} ({doc['buffered_bytes'] / 1024:.1f} KiB"
            + (
                f", oldest {state.iso(doc['oldest_buffered_ts'])})"
                if doc["oldest_buffered_ts"]
                else ")"
            ),
        ),
        (
            "dropped samples",
            f"{doc['dropped_total']} in total, {doc['dropped_unreported']} "
            "not yet reported to the server",
        ),
        ("last seq", f"{doc['last_seq']} (acknowledged up to {doc['acked_seq']})"),
    ]
    if doc["rejected_total"]:
        rows.append(("rejected samples", str(doc["rejected_total"])))
    if doc.get("interval_s"):
        rows.append(
            ("interval", f"{doc['interval_s']:g} s, {doc['batch_size']} samples per report")
        )
    if doc.get("rss_bytes"):
        rows.append(("memory (RSS)", f"{doc['rss_bytes'] / 2**20:.1f} MiB"))
    if doc.get("last_error") and (doc["last_error_at"] or 0) > (doc["last_report_at"] or 0):
        rows.append(("last error", f"{doc['last_error']} ({_ago(doc['last_error_at'])})"))
    if doc.get("buffer_error"):
        rows.append(("buffer", f"unreadable: {doc['buffer_error']}"))
    width = max(len(k) for k, _ in rows) + 1
    for key, value in rows:
        print(f"{key + ':':<{width}} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
