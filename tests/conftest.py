"""Shared fixtures: named personas (viewer, operator, admin, a device and another device) that
talk to the API with real credentials, so authentication is exercised on every request."""

from __future__ import annotations

import os

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from fleet import services
from fleet.roles import role_group


def pytest_report_header(config):
    from django.conf import settings

    return (
        f"EdgeFleet backends: database={settings.DB_VENDOR} "
        f"({settings.DATABASES['default']['NAME']}), broker={settings.BROKER_KIND}"
    )


def pytest_configure(config):
    from django.conf import settings

    # Password hashing is deliberately slow; tests create many users.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # CI sets this so a missing PostgreSQL or Redis fails loudly instead of falling back.
    if os.environ.get("EDGEFLEET_REQUIRE_SERVICES") and (
        settings.DB_VENDOR != "postgresql" or settings.BROKER_KIND != "redis"
    ):
        raise pytest.UsageError(
            f"EDGEFLEET_REQUIRE_SERVICES is set but database={settings.DB_VENDOR}, "
            f"broker={settings.BROKER_KIND}: set DATABASE_URL and REDIS_URL."
        )


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Throttles and coalescing live in the cache; every test starts with an empty one."""
    from django.core.cache import cache

    cache.clear()
    yield


@pytest.fixture
def make_user(db):
    def make(username: str, role: str | None) -> object:
        user = get_user_model().objects.create_user(username, password="correct horse battery staple")
        if role:
            user.groups.add(role_group(role))
        return user

    return make


@pytest.fixture
def api_client_for(db):
    """An APIClient that authenticates like automation does: with a real API token."""

    def make(user) -> APIClient:
        client = APIClient()
        if user is not None:
            token = services.create_api_token(None, user, name="test").token
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        return client

    return make


@pytest.fixture
def viewer(make_user):
    return make_user("vera-viewer", "viewer")


@pytest.fixture
def operator(make_user):
    return make_user("otto-operator", "operator")


@pytest.fixture
def admin(make_user):
    return make_user("ada-admin", "admin")


@pytest.fixture
def anonymous_api():
    return APIClient()


@pytest.fixture
def viewer_api(api_client_for, viewer):
    return api_client_for(viewer)


@pytest.fixture
def operator_api(api_client_for, operator):
    return api_client_for(operator)


@pytest.fixture
def admin_api(api_client_for, admin):
    return api_client_for(admin)


@pytest.fixture
def enrollment_token(db):
    """Factory: a plain enrollment token with the given options."""

    def make(**options) -> str:
        return services.create_enrollment_token(None, **options).token

    return make


@pytest.fixture
def enroll(db):
    """Factory: enroll a device through the real endpoint; returns (device_id, token, body)."""

    def do(token: str, name: str = "cam-01", fingerprint: str = "fp-cam-01", inventory=None, expect=201):
        client = APIClient()
        resp = client.post(
            "/api/v1/agent/enroll",
            {"enrollment_token": token, "name": name, "fingerprint": fingerprint,
             "inventory": inventory or {"hostname": name, "arch": "x86_64", "cpu_cores": 4}},
            format="json",
        )
        assert resp.status_code == expect, resp.content
        body = resp.json()
        return body.get("device_id"), body.get("device_token"), body

    return do


@pytest.fixture
def device_client():
    def make(device_token: str) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {device_token}")
        return client

    return make


@pytest.fixture
def active_device(enrollment_token, enroll, device_client):
    """An admitted device and an API client holding its token."""
    device_id, token, _ = enroll(enrollment_token(auto_accept=True), name="gw-1", fingerprint="fp-gw-1")
    return device_id, device_client(token)


@pytest.fixture
def other_device(enrollment_token, enroll, device_client):
    device_id, token, _ = enroll(enrollment_token(auto_accept=True), name="gw-2", fingerprint="fp-gw-2")
    return device_id, device_client(token)


# --- A real Celery worker -----------------------------------------------------------------------


def _worker_database_url() -> str:
    """The URL of the *test* database, so the worker sees what transactional tests commit."""
    from urllib.parse import urlsplit, urlunsplit

    from django.conf import settings

    db = settings.DATABASES["default"]
    if settings.DB_VENDOR == "sqlite":
        return f"sqlite:///{db['NAME']}"
    parts = urlsplit(settings.DATABASE_URL)
    return urlunsplit(parts._replace(path="/" + db["NAME"]))


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, django_db_blocker, tmp_path_factory):
    """A real `celery worker` process on the configured broker (Redis in CI, the file broker
    otherwise), consuming both queues, pointed at the test database."""
    import os
    import subprocess
    import sys
    import time

    from edgefleet.celery import app

    log_path = tmp_path_factory.mktemp("celery") / "worker.log"
    env = {**os.environ, "DATABASE_URL": _worker_database_url(), "PYTHONUNBUFFERED": "1"}
    log = open(log_path, "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "edgefleet", "worker", "-Q", "default,compress",
         "--pool", "solo", "--without-gossip", "--without-mingle", "--loglevel", "INFO",
         "-n", f"pytest-{os.getpid()}@%h"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"celery worker exited: {log_path.read_text()[-3000:]}")
            if "ready." in log_path.read_text():
                break
            time.sleep(0.3)
        else:
            raise RuntimeError(f"celery worker did not start: {log_path.read_text()[-3000:]}")
        yield {"process": proc, "log": log_path, "app": app}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
