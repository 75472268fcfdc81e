"""The HTTP client's pure parts: server URLs and what each error status means to the daemon.
(Requests themselves are tested against the real server in test_live_server.py.)"""

from __future__ import annotations

import json

import pytest

from agents.client import AgentClient, ApiError, TransportError, parse_server_url

from .conftest import closed_port_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://example.com", ("http", "example.com", 80, "")),
        ("https://example.com/", ("https", "example.com", 443, "")),
        ("https://example.com:8443/edgefleet/", ("https", "example.com", 8443, "/edgefleet")),
        ("http://[::1]:8000", ("http", "::1", 8000, "")),
        ("HTTP://10.0.0.5:8000/a/b?x=1", ("http", "10.0.0.5", 8000, "/a/b")),
    ],
)
def test_server_urls(url, expected):
    assert parse_server_url(url) == expected


@pytest.mark.parametrize(
    "url",
    ["example.com", "ftp://x", "http://", "http://u:p@host", "http://host:0", "http://host:x"],
)
def test_bad_server_urls(url):
    with pytest.raises(ValueError):
        parse_server_url(url)


def error(status: int, body: dict | None = None, headers: dict | None = None) -> ApiError:
    return ApiError(
        "POST", "/api/v1/agent/telemetry", status, headers or {}, json.dumps(body or {}).encode()
    )


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (401, {"detail": "Device token is invalid or revoked"}, "gone"),
        (403, {"detail": "device is pending approval", "status": "pending"}, "pending"),
        (403, {"detail": "disabled", "status": "disabled"}, "disabled"),
        (403, {"detail": "rejected", "status": "rejected"}, "gone"),
        (403, {"detail": "decommissioned", "status": "decommissioned"}, "gone"),
        (403, {"detail": "Device tokens cannot use the operators' API."}, "refused"),
        (400, {"detail": "Invalid input"}, "refused"),
        (413, {}, "refused"),
        (429, {}, "retry"),
        (503, {}, "retry"),
        (500, {}, "retry"),
    ],
)
def test_error_statuses_are_classified_for_the_daemon(status, body, kind):
    exc = error(status, body)
    assert exc.kind == kind
    if body.get("detail"):
        assert exc.detail == body["detail"]
        assert body["detail"] in str(exc)


def test_retry_after_seconds():
    assert error(429, headers={"retry-after": "30"}).retry_after == 30.0
    assert error(429, headers={"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}).retry_after is None
    assert error(503).retry_after is None


def test_non_json_error_body_still_gives_a_message():
    exc = ApiError("GET", "/x", 502, {}, b"<html>Bad Gateway</html>")
    assert exc.kind == "retry" and "Bad Gateway" in exc.detail


def test_unreachable_server_is_a_transport_error():
    client = AgentClient(closed_port_url(), token="efd_x", timeout=2)
    with pytest.raises(TransportError, match="cannot connect.*refused"):
        client.put_inventory({})


def test_device_requests_need_a_token():
    with pytest.raises(ValueError, match="enroll first"):
        AgentClient("http://127.0.0.1:9").send_telemetry("{}")
