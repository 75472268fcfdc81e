"""Project-wide checks: migrations, production settings, the OpenAPI schema, the broker, the
deployment files."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _manage(*args, env_extra=None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    # Browser tests allow async-unsafe calls in-process; a child checking deploy settings must not inherit it.
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_migrations_are_complete():
    result = _manage("makemigrations", "--check", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_deploy_is_clean_with_production_settings():
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env_extra={
        "EDGEFLEET_ENV": "production",
        "SECRET_KEY": "a" * 20 + "-production-secret-key-with-enough-entropy-1234567890",
        "ALLOWED_HOSTS": "fleet.example.com",
    })
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize("missing", ["SECRET_KEY", "ALLOWED_HOSTS"])
def test_production_refuses_to_start_without_secrets(missing):
    env = {"EDGEFLEET_ENV": "production", "SECRET_KEY": "x" * 60, "ALLOWED_HOSTS": "fleet.example.com"}
    env[missing] = ""
    result = _manage("check", env_extra=env)
    assert result.returncode != 0
    assert f"{missing} must be set" in result.stderr


def test_openapi_schema_generates_without_warnings(tmp_path):
    out = tmp_path / "schema.yml"
    result = _manage("spectacular", "--fail-on-warn", "--validate", "--file", str(out))
    assert result.returncode == 0, result.stderr
    schema = yaml.safe_load(out.read_text())
    assert schema["openapi"].startswith("3.")
    assert "/api/v1/agent/enroll" in schema["paths"] and "/api/v1/devices/" in schema["paths"]


@pytest.mark.django_db
def test_swagger_ui_is_served_from_local_static_files(client, viewer):
    client.force_login(viewer)
    page = client.get("/api/docs/").content.decode()
    assert "swagger-ui" in page
    assert "cdn" not in page.lower() and "https://" not in page.split("<body")[1]


@pytest.mark.django_db(transaction=True)
def test_celery_round_trip_through_the_real_broker(celery_worker_process, settings):
    from fleet.tasks import ping

    result = ping.delay("hello")
    assert result.get(timeout=60) == {"pong": "hello", "worker": os.uname().nodename}
    assert settings.BROKER_KIND == ("redis" if os.environ.get("REDIS_URL") else "filesystem")


def test_celery_is_configured_for_safe_delivery():
    from edgefleet.celery import app

    conf = app.conf
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert {q.name for q in conf.task_queues} == {"default", "compress"}


def test_compose_file_describes_the_production_stack():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"web", "worker", "compress-worker", "beat", "postgres", "redis"} <= set(services)
    assert "DATABASE_URL" in str(services["web"]["environment"])
    assert "-Q compress" in " ".join(services["compress-worker"]["command"]) or \
        "compress" in str(services["compress-worker"]["command"])


def test_commands_create_enrollment_token_prints_the_token_last(db):
    from io import StringIO

    from django.core.management import call_command

    from fleet.models import EnrollmentToken
    from fleet.secrets import hash_token

    out = StringIO()
    call_command("create_enrollment_token", "--auto-accept", "--label", "site=berlin", "--uses", "3",
                 stdout=out, stderr=StringIO())
    token = out.getvalue().strip().splitlines()[-1]
    row = EnrollmentToken.objects.get(token_hash=hash_token(token))
    assert row.auto_accept and row.labels == {"site": "berlin"} and row.max_uses == 3


def test_create_admin_is_idempotent(db):
    from io import StringIO

    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    out = StringIO()
    call_command("create_admin", "--username", "root-admin", stdout=out)
    assert "password:" in out.getvalue()
    again = StringIO()
    call_command("create_admin", "--username", "root-admin", "--if-missing", stdout=again)
    assert "left unchanged" in again.getvalue()
    assert get_user_model().objects.filter(username="root-admin", is_superuser=True).count() == 1
