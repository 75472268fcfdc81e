"""Devices pages: list with search, filters, sort and pages; bulk actions; pending admissions;
device detail; role checks and CSRF on every action."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from fleet.models import AuditEvent, Device, DeviceStatus

pytestmark = pytest.mark.django_db


def test_login_required(client):
    resp = client.get("/devices/")
    assert resp.status_code == 302 and "/accounts/login/" in resp["Location"]


def test_list_search_filter_sort_paginate(viewer_client, make_devices):
    make_devices(60)
    resp = viewer_client.get("/devices/")
    assert resp.status_code == 200
    body = resp.content.decode()
    assert "dev-00000" in body and "dev-00049" in body and "dev-00050" not in body
    assert "1–50 of 60 devices" in body

    body = viewer_client.get("/devices/?page=2").content.decode()
    assert "dev-00059" in body and "dev-00000" not in body

    body = viewer_client.get("/devices/?q=dev-0001").content.decode()
    assert "dev-00010" in body and "dev-00020" not in body

    body = viewer_client.get("/devices/?label=site=berlin&per_page=100").content.decode()
    assert "dev-00001" in body and "dev-00002" not in body

    body = viewer_client.get("/devices/?sort=-name").content.decode()
    assert body.index("dev-00059") < body.index("dev-00058")


def test_status_filter_and_bad_label_filter(viewer_client, make_devices):
    make_devices(3)
    make_devices(2, status=DeviceStatus.PENDING, prefix="new")
    body = viewer_client.get("/devices/?status=pending").content.decode()
    assert "new-00000" in body and "dev-00000" not in body
    resp = viewer_client.get("/devices/?label=bad key!")
    assert resp.status_code == 400
    assert "must be key=value or key" in resp.content.decode()


def test_htmx_request_gets_only_the_fragment(viewer_client, make_devices):
    make_devices(2)
    resp = viewer_client.get("/devices/?q=dev", HTTP_HX_REQUEST="true")
    body = resp.content.decode()
    assert resp.status_code == 200
    assert body.lstrip().startswith("<div id=\"device-table\">") and "<html" not in body


def test_viewer_sees_no_action_buttons(viewer_client, make_devices):
    device = make_devices(1, status=DeviceStatus.PENDING)[0]
    for url in ("/devices/", "/devices/pending/", f"/devices/{device.pk}/", "/enrollment-tokens/"):
        resp = viewer_client.get(url)
        assert resp.status_code == 200, url  # the page renders for a viewer, only without actions
        body = resp.content.decode()
        assert 'data-testid="bulk-actions"' not in body, url
        assert "Accept</button>" not in body and "Disable</button>" not in body, url
        assert 'data-testid="token-form"' not in body, url
        assert 'data-testid="labels-form"' not in body, url


def test_operator_sees_action_buttons(operator_client, make_devices):
    device = make_devices(1, status=DeviceStatus.PENDING)[0]
    assert 'data-testid="bulk-actions"' in operator_client.get("/devices/").content.decode()
    assert "Accept</button>" in operator_client.get("/devices/pending/").content.decode()
    body = operator_client.get(f"/devices/{device.pk}/").content.decode()
    assert 'data-testid="device-actions"' in body and 'data-testid="labels-form"' in body


def test_viewer_gets_403_on_every_device_post(viewer_client, make_devices):
    device = make_devices(1, status=DeviceStatus.PENDING)[0]
    posts = [
        (f"/devices/{device.pk}/accept/", {}),
        (f"/devices/{device.pk}/labels/", {"labels": "a=b"}),
        ("/devices/bulk/", {"action": "accept", "devices": [str(device.pk)]}),
        ("/enrollment-tokens/", {"description": "x"}),
    ]
    for url, data in posts:
        assert viewer_client.post(url, data).status_code == 403, url
    device.refresh_from_db()
    assert device.status == DeviceStatus.PENDING and device.labels == {"site": "paris"}


def test_actions_are_post_only(operator_client, make_devices):
    device = make_devices(1, status=DeviceStatus.PENDING)[0]
    assert operator_client.get(f"/devices/{device.pk}/accept/").status_code == 405
    device.refresh_from_db()
    assert device.status == DeviceStatus.PENDING


def test_csrf_enforced(operator, make_devices):
    device = make_devices(1, status=DeviceStatus.PENDING)[0]
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    assert client.post(f"/devices/{device.pk}/accept/").status_code == 403
    device.refresh_from_db()
    assert device.status == DeviceStatus.PENDING
    # With the token from a page the same POST works.
    client.get("/devices/pending/")
    token = client.cookies["csrftoken"].value
    resp = client.post(f"/devices/{device.pk}/accept/", {"csrfmiddlewaretoken": token})
    assert resp.status_code == 302
    device.refresh_from_db()
    assert device.status == DeviceStatus.ACTIVE


def test_accept_reject_from_pending(operator_client, operator, make_devices):
    a, b = make_devices(2, status=DeviceStatus.PENDING)
    resp = operator_client.post(f"/devices/{a.pk}/accept/", {"next": "/devices/pending/"}, follow=True)
    assert resp.redirect_chain[-1][0] == "/devices/pending/"
    assert f"{a.name} accepted." in resp.content.decode()
    operator_client.post(f"/devices/{b.pk}/reject/")
    a.refresh_from_db(), b.refresh_from_db()
    assert (a.status, b.status) == (DeviceStatus.ACTIVE, DeviceStatus.REJECTED)
    assert AuditEvent.objects.filter(action="device.accept", actor_user=operator, object_id=str(a.pk)).exists()


def test_invalid_transition_is_a_clear_message(operator_client, make_devices):
    device = make_devices(1)[0]
    resp = operator_client.post(f"/devices/{device.pk}/accept/", follow=True)
    assert "cannot accept a device that is active" in resp.content.decode()


def test_open_redirect_refused(operator_client, make_devices):
    device = make_devices(1, status=DeviceStatus.PENDING)[0]
    resp = operator_client.post(f"/devices/{device.pk}/accept/", {"next": "https://evil.example/"})
    assert resp["Location"] == f"/devices/{device.pk}/"


def test_bulk_accept_disable_and_labels(operator_client, make_devices):
    pending = make_devices(3, status=DeviceStatus.PENDING, prefix="p")
    active = make_devices(1, prefix="a")
    ids = [str(d.pk) for d in pending + active]
    resp = operator_client.post("/devices/bulk/", {"action": "accept", "devices": ids}, follow=True)
    body = resp.content.decode()
    assert "Accept: 3 devices done." in body and "1 skipped" in body
    assert Device.objects.filter(status=DeviceStatus.ACTIVE).count() == 4

    operator_client.post("/devices/bulk/", {"action": "add_labels", "devices": ids, "labels": "line=3, site=rome"})
    assert all(d.labels == {"site": "rome", "line": "3"} for d in Device.objects.all())
    operator_client.post("/devices/bulk/", {"action": "remove_labels", "devices": ids, "labels": "line"})
    assert all(d.labels == {"site": "rome"} for d in Device.objects.all())

    operator_client.post("/devices/bulk/", {"action": "disable", "devices": ids[:2]})
    assert Device.objects.filter(status=DeviceStatus.DISABLED).count() == 2


def test_bulk_bad_input_messages(operator_client, make_devices):
    device = make_devices(1)[0]
    body = operator_client.post("/devices/bulk/", {"action": "accept"}, follow=True).content.decode()
    assert "Select at least one device." in body
    body = operator_client.post("/devices/bulk/", {"action": "add_labels", "devices": [str(device.pk)],
                                                   "labels": "no-equals"}, follow=True).content.decode()
    assert "is not key=value" in body


def test_labels_edit_and_validation(operator_client, make_devices):
    device = make_devices(1)[0]
    operator_client.post(f"/devices/{device.pk}/labels/", {"labels": "site=berlin, line=3"})
    device.refresh_from_db()
    assert device.labels == {"site": "berlin", "line": "3"}
    body = operator_client.post(f"/devices/{device.pk}/labels/", {"labels": "bad key=1"}, follow=True).content.decode()
    assert "Labels not saved" in body and "label key" in body
    device.refresh_from_db()
    assert device.labels == {"site": "berlin", "line": "3"}


def test_device_detail(viewer_client, operator_client, make_devices):
    device = make_devices(1)[0]
    operator_client.post(f"/devices/{device.pk}/labels/", {"labels": "site=berlin"})
    body = viewer_client.get(f"/devices/{device.pk}/").content.decode()
    assert device.name in body and "Inventory" in body
    assert 'data-testid="device-charts"' in body
    assert "device.update" in body  # audit trail of this device
    assert 'title="' in body  # absolute time on hover


def test_device_metrics_json(viewer_client, make_devices):
    device = make_devices(1)[0]
    resp = viewer_client.get(f"/devices/{device.pk}/metrics/?range=24h")
    assert resp.status_code == 200
    data = resp.json()
    assert data["range"] == "24h" and data["ts"] == []
    assert viewer_client.get(f"/devices/{device.pk}/metrics/?range=2y").status_code == 400


def _count_queries(client, url) -> int:
    from django.core.cache import cache

    cache.clear()  # the overview caches fleet health for 20 s: count the uncached request
    with CaptureQueriesContext(connection) as ctx:
        resp = client.get(url)
    assert resp.status_code == 200
    return len(ctx.captured_queries)


@pytest.mark.parametrize("url", ["/devices/", "/devices/?status=active&sort=-last_seen", "/devices/?presence=online",
                                 "/"])
def test_same_number_of_queries_for_10_and_1000_devices(viewer_client, make_devices, url):
    make_devices(10, prefix="small")
    small = _count_queries(viewer_client, url)
    make_devices(990, prefix="big")
    assert Device.objects.count() == 1000
    assert _count_queries(viewer_client, url) == small
