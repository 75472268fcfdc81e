"""Filter sets of the compression API (and the dashboard lists)."""

from __future__ import annotations

import django_filters
from django.db.models import Q

from compression.models import CompressionJob, JobStatus, Variant, VariantStatus


def _model_q(prefix: str, value: str) -> Q:
    """A model given by name or by numeric id."""
    q = Q(**{f"{prefix}__name": value})
    if value.isdigit():
        q |= Q(**{f"{prefix}__id": int(value)})
    return q


class JobFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=JobStatus.choices)
    model = django_filters.CharFilter(method="filter_model", help_text="model name or id")

    class Meta:
        model = CompressionJob
        fields = ["status", "model", "version", "recipe"]

    def filter_model(self, queryset, name, value):
        return queryset.filter(_model_q("version__model", value))


class VariantFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=VariantStatus.choices)
    model = django_filters.CharFilter(method="filter_model", help_text="model name or id")
    deployable = django_filters.BooleanFilter(
        method="filter_deployable", help_text="accepted, stored and signed"
    )

    class Meta:
        model = Variant
        fields = ["status", "model", "source", "job", "recipe", "recommended", "pareto"]

    def filter_model(self, queryset, name, value):
        return queryset.filter(_model_q("source__model", value))

    def filter_deployable(self, queryset, name, value):
        deployable = Variant.objects.deployable().values("pk")
        return queryset.filter(pk__in=deployable) if value else queryset.exclude(pk__in=deployable)
