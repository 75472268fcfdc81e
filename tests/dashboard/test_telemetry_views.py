"""Device charts and fleet health read the telemetry module's 1-minute rollups."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from fleet.models.telemetry import DevicePresence, Rollup1m

pytestmark = pytest.mark.django_db


@pytest.fixture
def rollups(make_devices):
    from fleet.telemetry.partitions import ensure_partitions, is_postgres

    now = timezone.now().replace(second=0, microsecond=0)
    if is_postgres():
        ensure_partitions(now)
    device = make_devices(1)[0]
    Rollup1m.objects.bulk_create([
        Rollup1m(device=device, bucket=now - timedelta(minutes=i), count=6, cpu_percent_avg=20 + i,
                 cpu_percent_max=40, mem_used_bytes_avg=1e9, mem_total_bytes_avg=4e9, disk_used_bytes_avg=8e9,
                 disk_total_bytes_avg=32e9, net_rx_bytes_per_s_avg=1000, net_tx_bytes_per_s_avg=500)
        for i in range(3)
    ])
    DevicePresence.objects.create(device=device, state="online", since=now)
    return device


def test_device_metrics_from_rollups(viewer_client, rollups):
    data = viewer_client.get(f"/devices/{rollups.pk}/metrics/?range=1h").json()
    assert len(data["ts"]) == 3 and data["ts"] == sorted(data["ts"])
    assert data["cpu"] == [22, 21, 20] and data["mem"] == [25.0] * 3 and data["disk"] == [25.0] * 3
    assert data["temp"] == [None] * 3 and data["step_s"] == 60


def test_overview_health_and_presence(viewer_client, rollups):
    body = viewer_client.get("/").content.decode()
    assert "1 device reporting" in body and "25.0 %" in body
    assert 'data-testid="count-online"><span class="num">1<' in body
    assert "online" in viewer_client.get("/devices/?presence=online").content.decode()


def test_fleet_health_totals_count_each_device_once(viewer_client, rollups):
    """Three 1-minute buckets of one 4 GB device are 4 GB of fleet memory, not 12."""
    from fleet.templatetags.dashboard import size

    body = viewer_client.get("/").content.decode()
    assert f"{size(1e9)} of {size(4e9)}" in body and f"{size(8e9)} of {size(32e9)}" in body


def test_fleet_health_is_shared_between_requests(viewer_client, rollups):
    """Computed once, then served from the cache to every polling overview for 20 s."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as first:
        viewer_client.get("/")
    with CaptureQueriesContext(connection) as second:
        body = viewer_client.get("/").content.decode()
    assert "1 device reporting" in body
    assert len(second.captured_queries) == len(first.captured_queries) - 1
    assert not any("rollup1m" in q["sql"] for q in second.captured_queries)
