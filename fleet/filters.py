"""Filter sets shared by the API and the dashboard lists."""

from __future__ import annotations

import django_filters
from django.core.exceptions import ValidationError
from rest_framework import exceptions as drf_exceptions

from .models import AuditEvent, Device, DeviceStatus
from .timeutil import UTCDateTimeFilter


def label_query(values: list[str]) -> dict:
    """['site=berlin', 'gpu'] -> ORM lookups: equality for k=v, presence for a bare key."""
    lookups: dict = {}
    for raw in values:
        key, sep, value = raw.partition("=")
        key = key.strip()
        if not key or not key.replace("_", "").replace("-", "").replace(".", "").replace("/", "").isalnum():
            raise ValidationError(f"label filter {raw!r} must be key=value or key")
        if sep:
            lookups[f"labels__{key}"] = value.strip()
        else:
            lookups["labels__has_key"] = key
    return lookups


class DeviceFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=DeviceStatus.choices)
    label = django_filters.CharFilter(
        method="filter_label", help_text="key=value (or key alone); repeat to require several."
    )
    name = django_filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = Device
        fields = ["status", "label", "name", "arch"]

    def filter_label(self, queryset, name, value):
        values = self.data.getlist("label") if hasattr(self.data, "getlist") else [value]
        try:
            lookups = label_query(values)
        except ValidationError as exc:
            raise drf_exceptions.ValidationError({"label": exc.messages}) from exc
        for key, val in lookups.items():
            queryset = queryset.filter(**{key: val})
        return queryset


class AuditEventFilter(django_filters.FilterSet):
    since = UTCDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = UTCDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = AuditEvent
        fields = ["action", "object_type", "object_id", "actor", "since", "until"]
