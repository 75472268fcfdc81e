"""Users, roles and API tokens: admins only, for reading too (as in the API)."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone

from fleet import services
from fleet.forms import ApiTokenForm, RoleForm, UserCreateForm
from fleet.models import ApiToken
from fleet.roles import ADMIN, ROLES

from ._base import client_ip, require_role

User = get_user_model()


def _page(request, form=None, token_form=None, new_token=None, status=200):
    users = list(User.objects.prefetch_related("groups").order_by("username"))
    for u in users:
        names = {g.name for g in u.groups.all()}
        u.dashboard_role = "admin" if u.is_superuser else next((r for r in reversed(ROLES) if r in names), "")
    tokens = ApiToken.objects.select_related("user").order_by("-created_at")[:200]
    return render(request, "fleet/users.html", {
        "users": users, "form": form or UserCreateForm(), "token_form": token_form or ApiTokenForm(),
        "tokens": tokens, "new_token": new_token, "roles": ROLES,
    }, status=status)


@require_role(ADMIN, post_only=False)
def user_list(request):
    return _page(request)


@require_role(ADMIN)
def user_create(request):
    form = UserCreateForm(request.POST)
    if not form.is_valid():
        return _page(request, form=form, status=400)
    data = form.cleaned_data
    user = services.create_user(request.user, username=data["username"], email=data["email"],
                                password=data["password"], role=data["role"], ip=client_ip(request))
    messages.success(request, f"User {user.username} created as {data['role']}.")
    return redirect("dashboard:users")


@require_role(ADMIN)
def user_role(request, pk):
    user = get_object_or_404(User, pk=pk)
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Role not changed: " + "; ".join(e for errs in form.errors.values() for e in errs))
        return redirect("dashboard:users")
    role, active = form.cleaned_data["role"], form.cleaned_data["is_active"]
    try:
        services.update_user(request.user, user, role=role, is_active=active, ip=client_ip(request))
    except services.SelfLockout as exc:
        messages.error(request, str(exc))
        return redirect("dashboard:users")
    messages.success(request, f"{user.username}: role {role or 'none'}, {'active' if active else 'inactive'}.")
    return redirect("dashboard:users")


@require_role(ADMIN)
def api_token_create(request, pk):
    user = get_object_or_404(User, pk=pk)
    form = ApiTokenForm(request.POST)
    if not form.is_valid():
        return _page(request, token_form=form, status=400)
    days = form.cleaned_data.get("ttl_days")
    new = services.create_api_token(request.user, user, name=form.cleaned_data["name"],
                                    expires_at=timezone.now() + timedelta(days=days) if days else None,
                                    ip=client_ip(request))
    response = _page(request, new_token=new)
    response["Cache-Control"] = "no-store"
    return response


@require_role(ADMIN)
def api_token_revoke(request, pk):
    token = get_object_or_404(ApiToken, pk=pk)
    services.revoke_api_token(request.user, token, ip=client_ip(request))
    messages.success(request, f"API token {token.name} ({token.prefix}…) revoked.")
    return redirect("dashboard:users")
