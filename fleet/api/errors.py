"""One error shape for every 4xx: ``{"detail": "...", ...}`` with field errors kept as DRF gives
them, so clients can show the message and still find the field."""

from __future__ import annotations

from rest_framework.views import exception_handler as drf_exception_handler


def exception_handler(exc, context):
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    data = response.data
    if isinstance(data, dict) and "detail" not in data:
        fields = ", ".join(f"{k}: {_first(v)}" for k, v in data.items())
        response.data = {"detail": f"Invalid input: {fields}", "errors": data}
    elif isinstance(data, list):
        response.data = {"detail": "; ".join(str(x) for x in data), "errors": data}
    elif isinstance(data, dict) and isinstance(data.get("detail"), dict):
        response.data = data["detail"]  # structured PermissionDenied (e.g. device not active)
    return response


def _first(value) -> str:
    if isinstance(value, list) and value:
        return _first(value[0])
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_first(v)}" for k, v in value.items())
    return str(value)
