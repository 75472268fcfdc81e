"""Dashboard personas: a logged-in browser session per role (viewer, operator, admin)."""

from __future__ import annotations

import pytest
from django.test import Client

from fleet.models import Device, DeviceStatus


@pytest.fixture
def login(db):
    def make(user) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return make


@pytest.fixture
def viewer_client(login, viewer):
    return login(viewer)


@pytest.fixture
def operator_client(login, operator):
    return login(operator)


@pytest.fixture
def admin_client_(login, admin):
    return login(admin)


@pytest.fixture
def make_devices(db):
    """Factory: n devices in one statement (bulk_create), names dev-00000 …"""

    def make(n: int, *, status=DeviceStatus.ACTIVE, labels=None, prefix="dev") -> list[Device]:
        return Device.objects.bulk_create([
            Device(name=f"{prefix}-{i:05d}", fingerprint=f"fp-{prefix}-{i}", status=status,
                   labels=dict(labels or {"site": "berlin" if i % 2 else "paris"}), arch="x86_64", cpu_cores=4)
            for i in range(n)
        ])

    return make
