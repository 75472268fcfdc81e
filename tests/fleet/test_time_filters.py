"""Client timestamps are normalised to UTC: offsets PostgreSQL refuses (beyond ±15:59) and
values that leave the calendar give a 400, never a database error (found by the API fuzzer)."""

import pytest

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("url", ["/api/v1/audit/?since={}", "/api/v1/alerts/?since={}"])
def test_far_offsets_are_normalised(viewer_api, url):
    resp = viewer_api.get(url.format("0148-02-20T22:13:05-18:59"))
    assert resp.status_code == 200, resp.content


@pytest.mark.parametrize("url", ["/api/v1/audit/?until={}", "/api/v1/alerts/?until={}"])
def test_out_of_range_is_a_400(viewer_api, url):
    resp = viewer_api.get(url.format("0001-01-01T00:00:00%2B18:59"))
    assert resp.status_code == 400
    assert "out of range" in str(resp.json())


def test_device_telemetry_range_is_validated(viewer_api, active_device):
    device_id, _ = active_device
    resp = viewer_api.get(f"/api/v1/devices/{device_id}/telemetry?since=0001-01-01T00:00:00%2B18:59")
    assert resp.status_code == 400 and "out of range" in str(resp.json())
