"""Operator roles. Each role is a Django group; a higher role includes the lower ones.

viewer reads everything; operator also acts (admit devices, tokens for enrollment, jobs,
deployments); admin also manages users and API tokens. Superusers are admins.
"""

from __future__ import annotations

VIEWER = "viewer"
OPERATOR = "operator"
ADMIN = "admin"
ROLES = (VIEWER, OPERATOR, ADMIN)
_RANK = {None: 0, VIEWER: 1, OPERATOR: 2, ADMIN: 3}


def role_of(user) -> str | None:
    """The highest role of a user, or None (anonymous, device, or a user in no role group)."""
    if user is None or not getattr(user, "is_authenticated", False) or getattr(user, "is_device", False):
        return None
    if not user.is_active:
        return None
    if user.is_superuser:
        return ADMIN
    cached = getattr(user, "_edgefleet_role", "unset")
    if cached != "unset":
        return cached
    names = set(user.groups.values_list("name", flat=True))
    role = next((r for r in reversed(ROLES) if r in names), None)
    user._edgefleet_role = role
    return role


def has_role(user, role: str) -> bool:
    return _RANK[role_of(user)] >= _RANK[role]


def role_group(role: str):
    """The Group of a role. Created by a data migration; recreated here if a database flush (or a
    hand-edited database) lost it, so granting a role never fails."""
    from django.contrib.auth.models import Group

    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    return Group.objects.get_or_create(name=role)[0]
