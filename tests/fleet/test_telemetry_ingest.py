"""POST /api/v1/agent/telemetry: what is stored, what is refused, and what it costs."""

from __future__ import annotations

import gzip
import json
import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from fleet import services
from fleet.models import Device, DevicePresence, RollupDirty, TelemetrySample

from .telemetry_helpers import sample

pytestmark = pytest.mark.django_db
URL = "/api/v1/agent/telemetry"


def post(client, samples, **extra):
    return client.post(URL, {"samples": samples, **extra}, format="json")


def stored(device_id) -> list[int]:
    return sorted(TelemetrySample.objects.filter(device_id=device_id).values_list("seq", flat=True))


def test_a_batch_is_stored_and_acknowledged(active_device):
    device_id, client = active_device
    now = time.time()
    resp = post(client, [sample(1, now - 20), sample(2, now - 10, cpu_percent=99.5), sample(3, now)])
    assert resp.status_code == 200, resp.content
    assert resp.json() == {"acked_seq": 3}
    assert stored(device_id) == [1, 2, 3]
    row = TelemetrySample.objects.get(device_id=device_id, seq=2)
    assert row.cpu_percent == 99.5 and row.mem_total_bytes == 4_000_000_000
    assert abs(row.ts.timestamp() - (now - 10)) < 0.001
    assert Device.objects.get(pk=device_id).last_seen is not None


def test_iso_timestamps_and_optional_metrics_are_accepted(active_device):
    device_id, client = active_device
    minimal = {"seq": 1, "ts": "2026-12-01T10:00:00Z", "cpu_percent": 1, "mem_used_bytes": 1,
               "mem_total_bytes": 2}
    from unittest import mock

    with mock.patch("fleet.telemetry.ingest.time.time", return_value=1_796_119_200.0):
        resp = post(client, [minimal, sample(2, "2026-12-01T10:00:10+00:00", temperature_c=None)])
    assert resp.status_code == 200, resp.content
    rows = TelemetrySample.objects.filter(device_id=device_id).order_by("seq")
    assert [r.ts.isoformat() for r in rows] == ["2026-12-01T10:00:00+00:00", "2026-12-01T10:00:10+00:00"]
    assert rows[0].load_1m is None and rows[1].temperature_c is None


def test_a_replayed_batch_is_stored_once(active_device):
    device_id, client = active_device
    now = time.time()
    batch = [sample(i, now - 10 + i) for i in range(1, 4)]
    assert post(client, batch).json() == {"acked_seq": 3}
    assert post(client, batch).json() == {"acked_seq": 3}
    overlapping = batch[1:] + [sample(4, now), sample(5, now)]
    assert post(client, overlapping).json() == {"acked_seq": 5}
    assert stored(device_id) == [1, 2, 3, 4, 5]


def test_replays_are_recognised_without_the_cache(active_device):
    """The highest seq comes from the database when the cache has forgotten it."""
    from django.core.cache import cache

    device_id, client = active_device
    now = time.time()
    post(client, [sample(1, now - 2), sample(2, now - 1)])
    cache.clear()
    assert post(client, [sample(2, now - 1), sample(3, now)]).json() == {"acked_seq": 3}
    assert stored(device_id) == [1, 2, 3]


def test_an_agent_whose_state_was_reset_learns_the_highest_seq(active_device):
    """seqs restarting at 1 are not stored over the old ones; the answer makes the agent renumber."""
    device_id, client = active_device
    now = time.time()
    post(client, [sample(i, now - 100 + i) for i in range(1, 51)])
    resp = post(client, [sample(1, now), sample(2, now)])
    assert resp.json() == {"acked_seq": 50}
    assert len(stored(device_id)) == 50


BAD_SAMPLES = {
    "wrong type": ({"cpu_percent": "high"}, "cpu_percent", "must be a number"),
    "boolean": ({"mem_used_bytes": True}, "mem_used_bytes", "must be a number"),
    "missing field": ({"mem_total_bytes": ...}, "mem_total_bytes", "is required"),
    "missing seq": ({"seq": ...}, "seq", "is required"),
    "out of range": ({"cpu_percent": 250.0}, "cpu_percent", "between 0 and 100"),
    "negative bytes": ({"disk_used_bytes": -1}, "disk_used_bytes", "between"),
    "fractional bytes": ({"mem_used_bytes": 1.5}, "mem_used_bytes", "whole number"),
    "overflowing float": ({"temperature_c": 1e999}, "temperature_c", "finite"),
    "future timestamp": ({"ts": time.time() + 3600}, "ts", "in the future"),
    "ancient timestamp": ({"ts": 1_000_000.0}, "ts", "older than the raw retention"),
    "naive ISO timestamp": ({"ts": "2026-12-01T10:00:00"}, "ts", "timezone"),
    "garbage timestamp": ({"ts": "yesterday-ish"}, "ts", "ISO 8601"),
}


@pytest.mark.parametrize("case", BAD_SAMPLES, ids=list(BAD_SAMPLES))
def test_one_bad_sample_refuses_the_whole_batch_and_says_which(active_device, case):
    device_id, client = active_device
    overrides, field, message = BAD_SAMPLES[case]
    bad = {**sample(4), **overrides}
    batch = [sample(1), sample(2), sample(3), {k: v for k, v in bad.items() if v is not ...}]
    resp = client.post(URL, json.dumps({"samples": batch}).replace("Infinity", "1e999"),
                       content_type="application/json")
    assert resp.status_code == 400, resp.content
    body = resp.json()
    assert "nothing was stored" in body["detail"]
    assert list(body["errors"]) == ["3"]
    assert message in body["errors"]["3"][field]
    assert stored(device_id) == []


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(active_device, literal):
    device_id, client = active_device
    # Replace the value itself: "1.0" alone may also occur inside the timestamp's digits.
    text = json.dumps({"samples": [sample(1, cpu_percent=1.0)]}).replace(
        '"cpu_percent": 1.0', f'"cpu_percent": {literal}', 1)
    resp = client.post(URL, text, content_type="application/json")
    assert resp.status_code == 400 and literal.lstrip("-") in resp.json()["detail"]
    assert stored(device_id) == []


@pytest.mark.parametrize("body", [
    "not json", '{"samples": {"seq": 1}}', '[1, 2]', '{"samples": [1, 2]}',
    '{"samples": [], "dropped": -3}',
])
def test_malformed_bodies_are_400(active_device, body):
    device_id, client = active_device
    resp = client.post(URL, body, content_type="application/json")
    assert resp.status_code == 400 and resp.json()["detail"]
    assert stored(device_id) == []


def test_a_huge_batch_is_413_with_the_limit(active_device, settings):
    device_id, client = active_device
    settings.EDGEFLEET_TELEMETRY = {**settings.EDGEFLEET_TELEMETRY, "MAX_BATCH": 50}
    resp = post(client, [sample(i) for i in range(1, 52)])
    assert resp.status_code == 413
    assert resp.json()["max_samples"] == 50 and "at most 50" in resp.json()["detail"]
    assert stored(device_id) == []


def test_a_body_over_the_size_limit_is_413(active_device, settings):
    _, client = active_device
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    resp = post(client, [sample(i) for i in range(1, 20)])
    assert resp.status_code == 413


def test_gzip_bodies_are_accepted(active_device):
    device_id, client = active_device
    raw = gzip.compress(json.dumps({"samples": [sample(1), sample(2)]}).encode())
    resp = client.post(URL, raw, content_type="application/json", HTTP_CONTENT_ENCODING="gzip")
    assert resp.status_code == 200 and resp.json() == {"acked_seq": 2}
    assert stored(device_id) == [1, 2]


def test_credentials_are_checked_before_anything_is_stored(
    active_device, other_device, enrollment_token, enroll, device_client, operator_api, anonymous_api
):
    device_id, client = active_device
    other_id, other = other_device
    # Another device's token writes to that device, never to ours.
    assert post(other, [sample(1)]).status_code == 200
    assert stored(device_id) == [] and stored(other_id) == [1]
    # A pending device, no token, an operator's token, a revoked token.
    _, pending_token, _ = enroll(enrollment_token(), name="pend", fingerprint="fp-pend")
    pending = post(device_client(pending_token), [sample(1)])
    assert pending.status_code == 403 and pending.json()["status"] == "pending"
    assert post(anonymous_api, [sample(1)]).status_code == 401
    assert post(operator_api, [sample(1)]).status_code in (401, 403)
    services.revoke_device_credentials(None, Device.objects.get(pk=device_id))
    assert post(client, [sample(1)]).status_code == 401
    assert stored(device_id) == []
    assert TelemetrySample.objects.count() == 1


def test_dropped_samples_are_counted_once(active_device):
    device_id, client = active_device
    now = time.time()
    post(client, [sample(1, now - 1)], dropped=7)
    post(client, [sample(1, now - 1)], dropped=7)  # the answer was lost: same report again
    post(client, [sample(2, now)], dropped=2)
    assert DevicePresence.objects.get(pk=device_id).dropped_samples == 9


def test_the_agents_cumulative_drop_count_wins_and_replays_cannot_inflate_it(active_device):
    device_id, client = active_device
    now = time.time()
    post(client, [sample(1, now - 2)], dropped=7, dropped_total=7)
    # The answer was lost; the agent sends the same drops with a newer sample too.
    post(client, [sample(1, now - 2), sample(2, now - 1)], dropped=7, dropped_total=7)
    post(client, [sample(3, now)], dropped=2, dropped_total=9)
    assert DevicePresence.objects.get(pk=device_id).dropped_samples == 9


def test_last_seen_writes_are_coalesced(active_device):
    device_id, client = active_device
    now = time.time()
    post(client, [sample(1, now)], interval_s=10, batch_size=3)
    first = Device.objects.get(pk=device_id).last_seen
    post(client, [sample(2, now)], interval_s=10, batch_size=3)
    assert Device.objects.get(pk=device_id).last_seen == first


def test_late_samples_mark_their_hours_for_recomputing(active_device):
    device_id, client = active_device
    now = time.time()
    post(client, [sample(1, now - 7200), sample(2, now - 3600), sample(3, now)])
    assert RollupDirty.objects.filter(device_id=device_id).count() == 2


def test_query_count_does_not_grow_with_the_batch(active_device):
    _, client = active_device
    now = time.time()
    post(client, [sample(1, now)])  # first report: last_seen, highest seq from the database
    with CaptureQueriesContext(connection) as one:
        post(client, [sample(2, now)])
    with CaptureQueriesContext(connection) as many:
        post(client, [sample(i, now) for i in range(3, 503)])
    assert len(one) == len(many) <= 5, [q["sql"][:120] for q in many]
