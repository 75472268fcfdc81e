from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class EnrollmentToken(models.Model):
    """A shared secret that lets agents enroll; stored hashed, shown once at creation."""

    description = models.CharField(max_length=200, blank=True)
    token_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=16)
    auto_accept = models.BooleanField(
        default=False, help_text="Devices enrolling with this token are active at once."
    )
    labels = models.JSONField(default=dict, blank=True, help_text="Applied to enrolling devices.")
    max_uses = models.PositiveIntegerField(null=True, blank=True, help_text="Empty: unlimited.")
    uses = models.PositiveIntegerField(default=0)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… {self.description}".strip()

    @property
    def state(self) -> str:
        """valid, revoked, expired or used_up."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= timezone.now():
            return "expired"
        if self.max_uses is not None and self.uses >= self.max_uses:
            return "used_up"
        return "valid"

    def refusal(self) -> str | None:
        """Why this token cannot enroll a new device now, or None when it can."""
        return {
            "valid": None,
            "revoked": "enrollment token has been revoked",
            "expired": f"enrollment token expired at {self.expires_at.isoformat() if self.expires_at else ''}",
            "used_up": f"enrollment token has been used up ({self.uses} of {self.max_uses} uses)",
        }[self.state]

    def snapshot(self) -> dict:
        return {
            "description": self.description,
            "auto_accept": self.auto_accept,
            "labels": self.labels,
            "max_uses": self.max_uses,
            "uses": self.uses,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


class ApiToken(models.Model):
    """A user's token for automation; acts with that user's role. Stored hashed, shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    token_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=16)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_live(self) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > timezone.now()
