"""simulate_fleet speaks the real protocol and takes its batching from the server's enrollment answer."""

from __future__ import annotations

import json

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import override_settings

from fleet import simulator
from fleet.models import Device, TelemetrySample


def test_reporting_settings_follow_the_server_unless_overridden():
    config = {"telemetry_interval_s": 5, "batch_size": 7}
    assert simulator.reporting_settings(config, None, 0) == (5.0, 7)
    assert simulator.reporting_settings(config, 2.0, 4) == (2.0, 4)
    assert simulator.reporting_settings(config, 0.0, 0) == (0.0, 7)  # --interval 0: saturation
    assert simulator.reporting_settings({}, None, 0) == (10.0, 3)
    assert simulator.reporting_settings({"telemetry_interval_s": True, "batch_size": -1}, None, 0) == (10.0, 3)


@pytest.mark.django_db(transaction=True)
def test_simulated_devices_use_the_enrollment_config(live_server, enrollment_token, tmp_path, capsys):
    token = enrollment_token(auto_accept=True)
    devices = [simulator.VirtualDevice(index=i) for i in range(2)]
    assert simulator.enroll_all(live_server.url, token, devices, "simtest", threads=2) == 0
    assert all(d.config and d.config["batch_size"] >= 1 for d in devices)
    assert simulator.server_config(live_server.url, devices) == devices[0].config
    # Without the enrollment answer (devices loaded from --credentials), the config endpoint says the same.
    enrolled = devices[0].config
    for d in devices:
        d.config = None
    assert simulator.server_config(live_server.url, devices) == enrolled

    with override_settings(EDGEFLEET={**settings.EDGEFLEET, "TELEMETRY_INTERVAL_S": 0.05}):
        creds = tmp_path / "creds.json"
        call_command("simulate_fleet", "--server", live_server.url, "--devices", "2", "--token", token,
                     "--duration", "1.5", "--credentials", str(creds), "--json", "--prefix", "cmd")
    out = capsys.readouterr()
    assert "2 devices reporting every 0.15s (3 samples of 0.05s)" in out.err
    result = json.loads(out.out.strip().splitlines()[-1])
    assert result["errors"] == {} and result["samples_acked"] > 0
    ids = list(Device.objects.filter(name__startswith="cmd-").values_list("pk", flat=True))
    assert len(ids) == 2
    assert TelemetrySample.objects.filter(device_id__in=ids).count() == result["samples_acked"]
