"""Timestamps from clients: always stored and compared in UTC.

Python accepts UTC offsets up to ±23:59 and years 1-9999; PostgreSQL refuses offsets beyond
±15:59 and a conversion can leave year 1. Normalising to UTC here turns both into a clear 400
instead of a database error."""

from __future__ import annotations

from datetime import UTC, datetime

import django_filters
from django.utils import timezone
from rest_framework import serializers


def to_utc(value: datetime) -> datetime:
    """An aware datetime in UTC (naive ones are taken as UTC); ValueError when out of range."""
    if timezone.is_naive(value):
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{value.isoformat()} is out of range") from None


class UTCDateTimeFilter(django_filters.IsoDateTimeFilter):
    """IsoDateTimeFilter that normalises to UTC and answers 400 for out-of-range values."""

    def filter(self, qs, value):
        if value in (None, ""):
            return qs
        try:
            value = to_utc(value)
        except ValueError as exc:
            raise serializers.ValidationError({self.field_name: str(exc)}) from None
        return super().filter(qs, value)
