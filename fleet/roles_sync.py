"""Keep the role groups' Django permissions in step with the models (runs after migrate).

viewer: view_* on every EdgeFleet model; operator: also add/change on them; admin: everything,
including auth users and groups. The API checks roles directly; these permissions make the
admin site agree with it."""

from __future__ import annotations

from django.contrib.auth.models import Group, Permission

EDGEFLEET_APPS = ("fleet", "compression")


def sync_role_permissions(**kwargs) -> None:
    groups = {g.name: g for g in Group.objects.filter(name__in=["viewer", "operator", "admin"])}
    if len(groups) < 3:
        return
    ours = Permission.objects.filter(content_type__app_label__in=EDGEFLEET_APPS)
    groups["viewer"].permissions.set(ours.filter(codename__startswith="view_"))
    groups["operator"].permissions.set(
        ours.filter(codename__regex=r"^(view|add|change)_").exclude(codename__endswith="auditevent")
        | ours.filter(codename="view_auditevent")
    )
    groups["admin"].permissions.set(
        ours | Permission.objects.filter(content_type__app_label="auth")
    )
