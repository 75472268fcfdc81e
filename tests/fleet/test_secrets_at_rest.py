"""No token is ever stored in plain text: we search every row for the plain secret."""

import pytest
from django.db import connection

from fleet import services

pytestmark = pytest.mark.django_db


def _all_text_in_database() -> str:
    chunks = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            chunks.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(chunks)


def test_tokens_are_stored_hashed(enrollment_token, enroll, admin, admin_api):
    plain_enrollment = enrollment_token(auto_accept=True)
    _, plain_device, _ = enroll(plain_enrollment)
    plain_api = services.create_api_token(None, admin, name="automation").token
    created = admin_api.post("/api/v1/enrollment-tokens/", {"description": "via api"}, format="json").json()
    plain_via_api = created["token"]

    dump = _all_text_in_database()
    for secret in (plain_enrollment, plain_device, plain_api, plain_via_api):
        assert len(secret) > 40
        assert secret not in dump
        assert secret[4:] not in dump  # not even without the prefix
        assert services.hash_token(secret) in dump


def test_plain_token_is_shown_once(admin_api):
    created = admin_api.post("/api/v1/enrollment-tokens/", {"description": "once"}, format="json").json()
    assert created["token"].startswith("efe_")
    listed = admin_api.get("/api/v1/enrollment-tokens/").json()["results"]
    detail = admin_api.get(f"/api/v1/enrollment-tokens/{created['id']}/").json()
    assert all("token" not in row for row in listed)
    assert "token" not in detail and detail["prefix"] == created["token"][:12]
