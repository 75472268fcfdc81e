"""Validation shared by serializers: labels are string key=value pairs with sane limits."""

from __future__ import annotations

import re

from rest_framework import serializers

_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.\-/]{0,62}[A-Za-z0-9])?$")


def validate_labels(value) -> dict:
    if not isinstance(value, dict):
        raise serializers.ValidationError("labels must be an object of key: value strings")
    if len(value) > 64:
        raise serializers.ValidationError("at most 64 labels")
    clean = {}
    for key, val in value.items():
        if not isinstance(key, str) or not _LABEL_KEY.match(key):
            raise serializers.ValidationError(
                f"label key {key!r} must be 1-64 letters, digits, '_', '-', '.', '/'"
            )
        if not isinstance(val, str) or len(val) > 128 or "\x00" in val:
            raise serializers.ValidationError(f"label {key!r} needs a string value of at most 128 characters")
        clean[key] = val
    return clean


def parse_label_args(items: list[str]) -> dict:
    """['site=berlin', 'tier=edge'] -> {'site': 'berlin', 'tier': 'edge'}."""
    labels = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep:
            raise ValueError(f"label {item!r} must look like key=value")
        labels[key.strip()] = val.strip()
    return validate_labels(labels)


class LabelsField(serializers.JSONField):
    def to_internal_value(self, data):
        return validate_labels(super().to_internal_value(data))
