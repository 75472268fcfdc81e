"""Presence transitions and alerts (for duration, hysteresis, scope, offline), with controlled time;
the operators' API over them."""

from __future__ import annotations

import http.server
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from fleet.models import (
    Alert,
    AlertRule,
    AuditEvent,
    Device,
    DevicePresence,
    PresenceEvent,
    WebhookDelivery,
)
from fleet.telemetry import alerts, presence, rollups, webhooks

from .telemetry_helpers import at, sample, store

pytestmark = pytest.mark.django_db
T0 = at("2026-12-01 12:00:00")
PERIOD = 30  # 10 s interval x batches of 3 (the server's defaults)


def _seen(device_id, when):
    Device.objects.filter(pk=device_id).update(last_seen=when)


def test_presence_goes_online_late_offline_and_back_with_an_event_each_time(active_device, settings):
    device_id, _ = active_device
    grace = settings.EDGEFLEET_TELEMETRY["PRESENCE_GRACE_S"]
    _seen(device_id, T0)
    steps = [
        (T0 + timedelta(seconds=5), "online"),
        (T0 + timedelta(seconds=1.5 * PERIOD - 1), "online"),
        (T0 + timedelta(seconds=1.5 * PERIOD + 1), "late"),
        (T0 + timedelta(seconds=3 * PERIOD + grace - 1), "late"),
        (T0 + timedelta(seconds=3 * PERIOD + grace + 1), "offline"),
    ]
    for now, state in steps:
        presence.evaluate_presence(now)
        assert DevicePresence.objects.get(pk=device_id).state == state, now
    back = T0 + timedelta(seconds=600)
    _seen(device_id, back)
    presence.evaluate_presence(back + timedelta(seconds=1))
    row = DevicePresence.objects.get(pk=device_id)
    assert (row.state, row.since) == ("online", back + timedelta(seconds=1))
    events = list(PresenceEvent.objects.filter(device_id=device_id).order_by("at")
                  .values_list("from_state", "to_state"))
    assert events == [("", "online"), ("online", "late"), ("late", "offline"), ("offline", "online")]


def test_the_period_the_agent_announces_sets_the_thresholds(active_device):
    device_id, client = active_device
    client.post("/api/v1/agent/telemetry", {"samples": [sample(1)], "interval_s": 1, "batch_size": 2},
                format="json")
    presence.evaluate_presence(T0)  # creates the row
    DevicePresence.objects.filter(pk=device_id).update(report_period_s=2.0)
    _seen(device_id, T0)
    presence.evaluate_presence(T0 + timedelta(seconds=4))
    assert DevicePresence.objects.get(pk=device_id).state == "late"


def test_never_seen_devices_are_offline_and_counted(active_device, other_device):
    presence.evaluate_presence(T0)
    _seen(active_device[0], T0)
    presence.evaluate_presence(T0 + timedelta(seconds=1))
    assert presence.presence_counts() == {"online": 1, "late": 0, "offline": 1, "unknown": 0}


def _cpu(device_id, when, value, seq):
    store(device_id, [sample(seq, when.timestamp(), cpu_percent=value)], now=when.timestamp())


def test_an_alert_fires_after_its_for_duration_and_resolves_with_hysteresis(active_device):
    device_id, _ = active_device
    rule = AlertRule.objects.create(name="hot cpu", metric="cpu_percent", comparison="gt",
                                    threshold=80, clear_threshold=70, for_s=60, window_s=30)
    seq = iter(range(1, 1000))

    def tick(offset_s, value):
        now = T0 + timedelta(seconds=offset_s)
        _cpu(device_id, now - timedelta(seconds=1), value, next(seq))
        alerts.evaluate_alerts(now)
        return Alert.objects.get(rule=rule, device_id=device_id) if Alert.objects.filter(rule=rule).exists() else None

    assert tick(0, 50) is None
    assert tick(30, 90).state == "pending"
    assert tick(60, 92).state == "pending"
    fired = tick(90, 95)
    assert (fired.state, fired.fired_at, fired.value) == ("firing", T0 + timedelta(seconds=90), 95)
    assert tick(120, 75).state == "firing"  # below the threshold but not past the clear threshold
    resolved = tick(150, 65)
    assert (resolved.state, resolved.resolved_at) == ("resolved", T0 + timedelta(seconds=150))
    assert tick(180, 60).state == "resolved" and Alert.objects.count() == 1


def test_a_pending_alert_that_does_not_last_is_forgotten(active_device):
    device_id, _ = active_device
    AlertRule.objects.create(name="hot", metric="cpu_percent", threshold=80, for_s=120, window_s=20)
    _cpu(device_id, T0, 90, 1)
    alerts.evaluate_alerts(T0 + timedelta(seconds=1))
    assert Alert.objects.get().state == "pending"
    _cpu(device_id, T0 + timedelta(seconds=30), 20, 2)
    alerts.evaluate_alerts(T0 + timedelta(seconds=31))
    assert not Alert.objects.exists()


def test_rules_apply_only_to_devices_matching_their_labels(active_device, other_device):
    Device.objects.filter(pk=active_device[0]).update(labels={"site": "berlin"})
    AlertRule.objects.create(name="berlin hot", metric="cpu_percent", threshold=80,
                             label_selector={"site": "berlin"}, window_s=20)
    for i, (device_id, _) in enumerate((active_device, other_device)):
        _cpu(device_id, T0, 99, 1 + i)
    alerts.evaluate_alerts(T0 + timedelta(seconds=1))
    assert list(Alert.objects.values_list("device_id", "state")) == [
        (Device.objects.get(pk=active_device[0]).pk, "firing")]


def test_the_offline_alert_fires_and_resolves(active_device):
    device_id, _ = active_device
    _seen(device_id, T0)
    presence.evaluate_presence(T0 + timedelta(hours=1))
    alerts.evaluate_alerts(T0 + timedelta(hours=1))
    alert = Alert.objects.get(kind="offline")
    assert alert.state == "firing" and alert.rule is None
    _seen(device_id, T0 + timedelta(hours=2))
    presence.evaluate_presence(T0 + timedelta(hours=2))
    alerts.evaluate_alerts(T0 + timedelta(hours=2))
    alert.refresh_from_db()
    assert (alert.state, alert.resolved_at) == ("resolved", T0 + timedelta(hours=2))


class _Receiver(http.server.BaseHTTPRequestHandler):
    statuses: list = []
    bodies: list = []

    def do_POST(self):  # noqa: N802
        self.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(self.statuses.pop(0) if self.statuses else 200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Receiver.statuses, _Receiver.bodies = [], []
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Receiver
    server.shutdown()


def test_webhooks_retry_transient_errors_only(active_device, receiver, django_capture_on_commit_callbacks):
    url, handler = receiver
    device_id, _ = active_device
    AlertRule.objects.create(name="hot", metric="cpu_percent", threshold=80, window_s=20, webhook_url=url)
    _cpu(device_id, T0, 99, 1)
    with django_capture_on_commit_callbacks() as callbacks:
        alerts.evaluate_alerts(T0 + timedelta(seconds=1))
    assert len(callbacks) == 1
    delivery = WebhookDelivery.objects.get()
    handler.statuses = [503, 200]
    assert webhooks.deliver(delivery.pk, final_attempt=False) == "retry"
    assert webhooks.deliver(delivery.pk, final_attempt=False) == "delivered"
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts, delivery.response_status) == ("delivered", 2, 200)
    assert b'"event":"fired"' in handler.bodies[-1] and b'"name":"hot"' in handler.bodies[-1]
    # A 4xx is final: not retried.
    other = WebhookDelivery.objects.create(alert=delivery.alert, url=url, event="resolved", payload={})
    handler.statuses = [404]
    assert webhooks.deliver(other.pk, final_attempt=False) == "failed"


# --- API ----------------------------------------------------------------------------------------


def test_operators_manage_rules_with_an_audit_trail_and_viewers_only_read(operator_api, viewer_api):
    body = {"name": "hot", "metric": "cpu_percent", "comparison": "gt", "threshold": 90,
            "clear_threshold": 80, "for_s": 120, "label_selector": {"site": "berlin"}}
    assert viewer_api.post("/api/v1/alert-rules/", body, format="json").status_code == 403
    created = operator_api.post("/api/v1/alert-rules/", body, format="json")
    assert created.status_code == 201, created.content
    rule_id = created.json()["id"]
    flapping = operator_api.patch(f"/api/v1/alert-rules/{rule_id}/", {"clear_threshold": 95}, format="json")
    assert flapping.status_code == 400 and "clear_threshold" in flapping.json()["detail"]
    assert operator_api.patch(f"/api/v1/alert-rules/{rule_id}/", {"enabled": False}, format="json").status_code == 200
    assert viewer_api.get("/api/v1/alert-rules/").json()["count"] == 1
    assert operator_api.delete(f"/api/v1/alert-rules/{rule_id}/").status_code == 204
    actions = list(AuditEvent.objects.filter(object_type="fleet.alertrule").order_by("id")
                   .values_list("action", "actor"))
    assert actions == [("alert_rule.create", "otto-operator"), ("alert_rule.update", "otto-operator"),
                       ("alert_rule.delete", "otto-operator")]


def test_viewers_list_alerts_with_filters_in_constant_queries(viewer_api, active_device, other_device):
    rule = AlertRule.objects.create(name="hot", metric="cpu_percent", threshold=80, window_s=20)
    for i, (device_id, _) in enumerate((active_device, other_device)):
        _cpu(device_id, T0, 99, 1 + i)
    alerts.evaluate_alerts(T0 + timedelta(seconds=1))
    Alert.objects.filter(device_id=other_device[0]).update(state="resolved", resolved_at=T0)
    viewer_api.get("/api/v1/alerts/")  # first use of the token
    with CaptureQueriesContext(connection) as queries:
        firing = viewer_api.get(f"/api/v1/alerts/?state=firing&rule={rule.pk}").json()
    assert [a["device_name"] for a in firing["results"]] == ["gw-1"]
    assert firing["results"][0]["rule_name"] == "hot"
    assert len(queries) <= 5, [q["sql"][:100] for q in queries]


def test_device_telemetry_series_raw_and_rolled_up(viewer_api, active_device):
    device_id, _ = active_device
    store(device_id, [sample(i + 1, (T0 + timedelta(seconds=10 * i)).timestamp(), cpu_percent=float(i))
                      for i in range(12)], now=(T0 + timedelta(minutes=2)).timestamp())
    rollups.rollup_range(T0, T0 + timedelta(minutes=2))
    base = f"/api/v1/devices/{device_id}/telemetry?since={T0.isoformat()}&until={(T0 + timedelta(minutes=2)).isoformat()}"
    raw = viewer_api.get(base.replace("+", "%2B") + "&metrics=cpu_percent").json()
    assert raw["resolution"] == "raw" and raw["series"]["cpu_percent"] == [float(i) for i in range(12)]
    assert len(raw["t"]) == 12
    minute = viewer_api.get(base.replace("+", "%2B") + "&resolution=1m&metrics=cpu_percent").json()
    assert minute["count"] == [6, 6]
    assert minute["series"]["cpu_percent"] == {"min": [0.0, 6.0], "avg": [2.5, 8.5], "max": [5.0, 11.0]}
    hour = viewer_api.get(base.replace("+", "%2B") + "&resolution=1h").json()
    assert hour["count"] == [12] and hour["series"]["cpu_percent"]["avg"] == [5.5]
    assert viewer_api.get(base.replace("+", "%2B") + "&resolution=5m").status_code == 400
    assert viewer_api.get(base.replace("+", "%2B") + "&metrics=bogus").status_code == 400


def test_fleet_summary(viewer_api, active_device, other_device):
    _cpu(active_device[0], T0, 40, 1)
    presence.evaluate_presence(T0)
    body = viewer_api.get("/api/v1/fleet/summary").json()
    assert body["devices"]["total"] == 2 and body["devices"]["by_status"]["active"] == 2
    assert set(body["presence"]) == {"online", "late", "offline", "unknown"}
    assert "cpu_percent" in body["telemetry"]["metrics"]
    assert viewer_api.get("/api/v1/presence-events/").json()["count"] == 2


def test_devices_cannot_read_the_operators_telemetry_api(active_device):
    device_id, client = active_device
    assert client.get(f"/api/v1/devices/{device_id}/telemetry").status_code == 403
    assert client.get("/api/v1/fleet/summary").status_code == 403
