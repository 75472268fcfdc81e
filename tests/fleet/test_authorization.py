"""The authorization matrix: every operators' endpoint against every persona.

anonymous → 401; a device token → 403; viewer reads; operator acts; admin manages users and
API tokens. A device can never read another device's data."""

import pytest

from fleet.models import ApiToken, Device, EnrollmentToken
from fleet.services import create_api_token

pytestmark = pytest.mark.django_db

READ, ACT, ADMIN_ONLY = "read", "act", "admin"


@pytest.fixture
def objects(active_device, admin, enrollment_token):
    enrollment_token()
    device_id, _ = active_device
    return {
        "device": device_id,
        "etoken": EnrollmentToken.objects.first().pk,
        "apitoken": create_api_token(None, admin, name="ci").obj.pk,
        "user": admin.pk,
    }


# (method, path template, body, kind)
ENDPOINTS = [
    ("get", "/api/v1/devices/", None, READ),
    ("get", "/api/v1/devices/{device}/", None, READ),
    ("patch", "/api/v1/devices/{device}/", {"labels": {"site": "x"}}, ACT),
    ("post", "/api/v1/devices/", {"name": "pre", "fingerprint": "fp-pre"}, ACT),
    ("post", "/api/v1/devices/{device}/disable/", None, ACT),
    ("post", "/api/v1/devices/{device}/revoke-credentials/", None, ACT),
    ("get", "/api/v1/enrollment-tokens/", None, READ),
    ("get", "/api/v1/enrollment-tokens/{etoken}/", None, READ),
    ("post", "/api/v1/enrollment-tokens/", {"description": "new"}, ACT),
    ("post", "/api/v1/enrollment-tokens/{etoken}/revoke/", None, ACT),
    ("get", "/api/v1/audit/", None, READ),
    ("get", "/api/v1/me/", None, READ),
    ("get", "/api/v1/api-tokens/", None, ADMIN_ONLY),
    ("post", "/api/v1/api-tokens/", {"name": "bot"}, ADMIN_ONLY),
    ("post", "/api/v1/api-tokens/{apitoken}/revoke/", None, ADMIN_ONLY),
    ("get", "/api/v1/users/", None, ADMIN_ONLY),
    ("post", "/api/v1/users/", {"username": "newbie", "role": "viewer"}, ADMIN_ONLY),
    ("get", "/api/v1/users/{user}/", None, ADMIN_ONLY),
]

ALLOWED = {
    "viewer": {READ},
    "operator": {READ, ACT},
    "admin": {READ, ACT, ADMIN_ONLY},
}


@pytest.mark.parametrize("persona", ["anonymous", "device", "viewer", "operator", "admin"])
@pytest.mark.parametrize(("method", "path", "body", "kind"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS])
def test_matrix(persona, method, path, body, kind, objects, request, anonymous_api, active_device):
    if persona == "anonymous":
        client = anonymous_api
    elif persona == "device":
        client = active_device[1]
    else:
        client = request.getfixturevalue(f"{persona}_api")
    url = path.format(**objects)
    resp = getattr(client, method)(url, body, format="json") if body is not None else getattr(client, method)(url)

    if persona == "anonymous":
        assert resp.status_code == 401, resp.content
    elif persona == "device":
        assert resp.status_code == 403, resp.content
        assert resp.json()["detail"] == "Device tokens cannot use the operators' API."
    elif kind in ALLOWED[persona]:
        assert resp.status_code in (200, 201), (resp.status_code, resp.content)
    else:
        assert resp.status_code == 403, resp.content


def test_user_without_role_can_do_nothing(make_user, api_client_for):
    client = api_client_for(make_user("nobody", None))
    assert client.get("/api/v1/devices/").status_code == 403


def test_device_cannot_touch_another_device(active_device, other_device):
    """Agent endpoints act only on the caller's own device; operator endpoints refuse devices."""
    device_id, agent = active_device
    other_id, _ = other_device
    assert agent.get(f"/api/v1/devices/{other_id}/").status_code == 403
    assert agent.patch(f"/api/v1/devices/{other_id}/", {"labels": {}}, format="json").status_code == 403
    agent.put("/api/v1/agent/inventory", {"hostname": "changed-by-1"}, format="json")
    assert Device.objects.get(pk=other_id).hostname == "gw-2"
    assert Device.objects.get(pk=device_id).hostname == "changed-by-1"


def test_revoked_api_token_stops_working(admin, api_client_for):
    client = api_client_for(admin)
    assert client.get("/api/v1/me/").json() == {"username": "ada-admin", "role": "admin"}
    ApiToken.objects.filter(user=admin).update(revoked_at="2020-01-01T00:00:00Z")
    resp = client.get("/api/v1/me/")
    assert resp.status_code == 401 and "revoked" in resp.json()["detail"]


def test_session_login_works_for_the_api(client, operator):
    client.login(username="otto-operator", password="correct horse battery staple")
    assert client.get("/api/v1/devices/").status_code == 200
    # Unsafe methods with a session need the CSRF token.
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.login(username="otto-operator", password="correct horse battery staple")
    assert strict.post("/api/v1/enrollment-tokens/", {}, content_type="application/json").status_code == 403
