"""Presence: is each active device reporting on time?

A device's *report period* is its sampling interval times its batch size (the agent announces
both with every report; the server's settings otherwise), because that is how often it talks.
From ``Device.last_seen`` (written by ingest at most once per coalescing window, at most a third
of a period behind):

- ``online``: seen within 1.5 periods;
- ``late``: not seen for more than 1.5 periods;
- ``offline``: not seen for more than 3 periods plus ``PRESENCE_GRACE_S`` (or never seen).

Beat evaluates every device every few seconds; each transition is recorded as a PresenceEvent.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction

from fleet.models import Device, DevicePresence, DeviceStatus, PresenceEvent, PresenceState

LATE_FACTOR = 1.5
OFFLINE_FACTOR = 3.0


def default_period() -> float:
    from fleet.api.agent import agent_config

    config = agent_config()
    return float(config["telemetry_interval_s"]) * int(config["batch_size"])


def state_for(last_seen: datetime | None, period_s: float, now: datetime) -> str:
    """The presence a device should have at ``now``."""
    if last_seen is None:
        return PresenceState.OFFLINE
    silent = (now - last_seen).total_seconds()
    grace = settings.EDGEFLEET_TELEMETRY["PRESENCE_GRACE_S"]
    if silent > OFFLINE_FACTOR * period_s + grace:
        return PresenceState.OFFLINE
    if silent > LATE_FACTOR * period_s:
        return PresenceState.LATE
    return PresenceState.ONLINE


def evaluate_presence(now: datetime) -> dict:
    """Update every active device's presence; record an event for each change. Returns counts
    of transitions by new state."""
    fallback = default_period()
    devices = Device.objects.filter(status=DeviceStatus.ACTIVE).values_list("id", "last_seen")
    current = {
        p.device_id: p
        for p in DevicePresence.objects.filter(device__status=DeviceStatus.ACTIVE)
    }
    changed: list[DevicePresence] = []
    created: list[DevicePresence] = []
    events: list[PresenceEvent] = []
    for device_id, last_seen in devices.iterator(chunk_size=2000):
        presence = current.get(device_id)
        period = (presence.report_period_s if presence else None) or fallback
        state = state_for(last_seen, period, now)
        if presence is None:
            created.append(DevicePresence(device_id=device_id, state=state, since=now,
                                          report_period_s=None, evaluated_at=now))
            events.append(PresenceEvent(device_id=device_id, from_state="", to_state=state,
                                        at=now, last_seen=last_seen))
        elif presence.state != state:
            events.append(PresenceEvent(device_id=device_id, from_state=presence.state,
                                        to_state=state, at=now, last_seen=last_seen))
            presence.state, presence.since, presence.evaluated_at = state, now, now
            changed.append(presence)
    with transaction.atomic():
        DevicePresence.objects.bulk_create(created, batch_size=1000, ignore_conflicts=True)
        DevicePresence.objects.bulk_update(changed, ["state", "since", "evaluated_at"], batch_size=1000)
        PresenceEvent.objects.bulk_create(events, batch_size=1000)
    counts: dict[str, int] = {}
    for event in events:
        counts[event.to_state] = counts.get(event.to_state, 0) + 1
    return counts


def presence_counts() -> dict[str, int]:
    """How many active devices are online, late, offline (and not yet evaluated)."""
    from django.db.models import Count

    counts = {s.value: 0 for s in PresenceState}
    rows = (
        Device.objects.filter(status=DeviceStatus.ACTIVE)
        .values("presence__state").annotate(n=Count("id")).order_by()
    )
    for row in rows:
        counts[row["presence__state"] or "unknown"] = row["n"]
    counts.setdefault("unknown", 0)
    return counts


def recent_events(device=None, since: datetime | None = None, limit: int = 100):
    """Presence transitions, newest first (for the dashboard's timeline)."""
    qs = PresenceEvent.objects.select_related("device")
    if device is not None:
        qs = qs.filter(device=device)
    if since is not None:
        qs = qs.filter(at__gte=since)
    return qs[:limit]


def offline_since(presence: DevicePresence, now: datetime) -> timedelta | None:
    if presence.state != PresenceState.OFFLINE:
        return None
    return now - presence.since
