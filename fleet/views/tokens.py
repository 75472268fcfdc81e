"""Enrollment tokens: create (the secret shown once, with the agent command), list, revoke."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render

from fleet import services
from fleet.forms import EnrollmentTokenForm
from fleet.models import EnrollmentToken
from fleet.roles import OPERATOR, has_role

from ._base import client_ip, forbidden, require_role


def server_url(request) -> str:
    """This server's URL as the agent should use it (what the operator's browser used)."""
    return request.build_absolute_uri("/").rstrip("/")


def _page(request, form, new=None, status=200):
    tokens = EnrollmentToken.objects.select_related("created_by").order_by("-created_at")[:200]
    return render(request, "fleet/tokens.html", {
        "form": form, "tokens": tokens, "new": new, "server_url": server_url(request),
    }, status=status)


@login_required
def token_list(request):
    if request.method == "POST":
        # Creating is an operator's action; the same URL keeps the form and its errors together.
        if not has_role(request.user, OPERATOR):
            return forbidden(request, OPERATOR)
        form = EnrollmentTokenForm(request.POST)
        if not form.is_valid():
            return _page(request, form, status=400)
        data = form.cleaned_data
        new = services.create_enrollment_token(
            request.user, description=data["description"], auto_accept=data["auto_accept"],
            labels=data["labels"], max_uses=data["max_uses"], expires_at=form.expires_at(),
            ip=client_ip(request),
        )
        # Rendered, not redirected: the plain token exists only in this response.
        response = _page(request, EnrollmentTokenForm(), new=new)
        response["Cache-Control"] = "no-store"
        return response
    return _page(request, EnrollmentTokenForm())


@require_role(OPERATOR)
def token_revoke(request, pk):
    token = get_object_or_404(EnrollmentToken, pk=pk)
    services.revoke_enrollment_token(request.user, token, ip=client_ip(request))
    messages.success(request, f"Token {token.prefix}… revoked; devices already enrolled keep working.")
    return redirect("dashboard:tokens")
