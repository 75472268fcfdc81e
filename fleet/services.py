"""Multi-object work on devices, tokens and credentials, shared by the API, the dashboard and
the management commands. Each function records its audit event in the same transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from . import audit
from .models import ApiToken, Device, DeviceStatus, EnrollmentToken
from .secrets import ENROLLMENT_PREFIX, USER_PREFIX, display_prefix, hash_token, new_token


class EnrollmentRefused(Exception):
    """The enrollment token is wrong, expired, used up or revoked (answered with 401)."""


class InvalidTransition(Exception):
    """An admission action that does not apply to the device's current status (409)."""


# --- Enrollment tokens --------------------------------------------------------------------------


@dataclass
class NewSecret:
    """A freshly created object and its plain token, which is never stored and shown once."""

    obj: object
    token: str


def create_enrollment_token(
    user,
    *,
    description: str = "",
    auto_accept: bool = False,
    labels: dict | None = None,
    max_uses: int | None = None,
    expires_at: datetime | None = None,
    ip: str | None = None,
) -> NewSecret:
    """Create an enrollment token; the plain token is in the result and nowhere else."""
    if expires_at is None:
        expires_at = timezone.now() + timedelta(hours=settings.EDGEFLEET["ENROLLMENT_TOKEN_TTL_HOURS"])
    token = new_token(ENROLLMENT_PREFIX)
    with transaction.atomic():
        obj = EnrollmentToken.objects.create(
            description=description,
            token_hash=hash_token(token),
            prefix=display_prefix(token),
            auto_accept=auto_accept,
            labels=labels or {},
            max_uses=max_uses,
            expires_at=expires_at,
            created_by=user if getattr(user, "pk", None) else None,
        )
        audit.record(user, "enrollment_token.create", obj, after=obj.snapshot(), ip=ip)
    return NewSecret(obj, token)


def revoke_enrollment_token(user, token: EnrollmentToken, *, ip: str | None = None) -> EnrollmentToken:
    with transaction.atomic():
        token = EnrollmentToken.objects.select_for_update().get(pk=token.pk)
        if token.revoked_at is None:
            before = token.snapshot()
            token.revoked_at = timezone.now()
            token.save(update_fields=["revoked_at"])
            audit.record(user, "enrollment_token.revoke", token, before=before, after=token.snapshot(), ip=ip)
    return token


# --- Enrollment ---------------------------------------------------------------------------------


@dataclass
class Enrollment:
    device: Device
    device_token: str
    reenrolled: bool


def enroll_device(
    *, enrollment_token: str, name: str, fingerprint: str, inventory: dict, ip: str | None = None
) -> Enrollment:
    """Admit an agent: find or create its device and issue a new device token.

    A replayed enrollment (same fingerprint, e.g. the agent lost our first answer) returns the same
    device with a fresh token and does not use up another use of the enrollment token. A device
    an operator pre-provisioned with this fingerprint is admitted as active.
    """
    with transaction.atomic():
        token = (
            EnrollmentToken.objects.select_for_update()
            .filter(token_hash=hash_token(enrollment_token or ""))
            .first()
        )
        if token is None:
            raise EnrollmentRefused("enrollment token is not valid")
        existing = (
            Device.objects.select_for_update()
            .filter(fingerprint=fingerprint)
            .exclude(status=DeviceStatus.DECOMMISSIONED)
            .first()
            if fingerprint
            else None
        )
        replay = existing is not None and existing.enrolled_with_id == token.pk
        refusal = token.refusal()
        # A replay of an enrollment this token already paid for does not need a use left.
        if refusal and not (replay and token.state == "used_up"):
            raise EnrollmentRefused(refusal)
        now = timezone.now()
        if existing is not None:
            device, before = existing, existing.snapshot()
            if not replay:
                token.uses += 1
                token.save(update_fields=["uses"])
                device.labels = {**token.labels, **device.labels}
                if device.enrolled_at is None and device.status == DeviceStatus.ACTIVE:
                    pass  # pre-provisioned by an operator: already admitted
                elif device.status == DeviceStatus.PENDING and token.auto_accept:
                    device.status = DeviceStatus.ACTIVE
            device.name = device.name or name
            device.enrolled_with = token
            device.enrolled_at = device.enrolled_at or now
            apply_inventory(device, inventory)
            device.save()
            device_token = device.issue_credential()
            audit.record(None, "device.reenroll" if replay else "device.enroll", device,
                         before=before, after=device.snapshot(), ip=ip)
            return Enrollment(device, device_token, reenrolled=True)

        token.uses += 1
        token.save(update_fields=["uses"])
        device = Device(
            name=name,
            fingerprint=fingerprint,
            labels=dict(token.labels),
            status=DeviceStatus.ACTIVE if token.auto_accept else DeviceStatus.PENDING,
            enrolled_with=token,
            enrolled_at=now,
        )
        apply_inventory(device, inventory)
        try:
            with transaction.atomic():
                device.save(force_insert=True)
        except IntegrityError:
            raise EnrollmentRefused("another enrollment with this fingerprint is in progress; retry") from None
        device_token = device.issue_credential()
        audit.record(None, "device.enroll", device, after=device.snapshot(), ip=ip)
        if device.status == DeviceStatus.ACTIVE:
            audit.record(None, "device.auto_accept", device, after=device.snapshot(), ip=ip)
        return Enrollment(device, device_token, reenrolled=False)


def _int_or_none(value) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def apply_inventory(device: Device, inventory: dict) -> bool:
    """Copy the agent's inventory into the device's columns; True when anything changed."""
    inventory = inventory or {}
    ort = inventory.get("onnxruntime") or {}
    if not isinstance(ort, dict):
        ort = {}
    cpu = inventory.get("cpu") or {}
    if not isinstance(cpu, dict):
        cpu = {}
    fields = {
        "inventory": inventory,
        "hostname": str(inventory.get("hostname") or "")[:255],
        "os": str(inventory.get("os") or "")[:100],
        "arch": str(inventory.get("arch") or "")[:32],
        "cpu_model": str(inventory.get("cpu_model") or cpu.get("model") or "")[:255],
        "cpu_cores": _int_or_none(inventory.get("cpu_cores") or cpu.get("cores")),
        "memory_total_bytes": _int_or_none(inventory.get("memory_total_bytes")),
        "disk_total_bytes": _int_or_none(inventory.get("disk_total_bytes")),
        "agent_version": str(inventory.get("agent_version") or "")[:50],
        "onnxruntime_version": str(inventory.get("onnxruntime_version") or ort.get("version") or "")[:50],
        "execution_providers": list(
            inventory.get("execution_providers") or ort.get("providers") or []
        ),
    }
    changed = False
    for key, value in fields.items():
        if getattr(device, key) != value:
            setattr(device, key, value)
            changed = True
    return changed


def update_inventory(device: Device, inventory: dict) -> bool:
    """Store a newer inventory report; True when it differed from what we had. New resources or
    execution providers may change which variant fits the device: it is re-placed after commit."""
    changed = apply_inventory(device, inventory)
    if changed:
        from . import rollouts

        device.save()
        transaction.on_commit(lambda: rollouts.reevaluate_device(device))
    return changed


# --- Admission and lifecycle ----------------------------------------------------------------------

_TRANSITIONS: dict[str, tuple[set[str], str]] = {
    "accept": ({DeviceStatus.PENDING}, DeviceStatus.ACTIVE),
    "reject": ({DeviceStatus.PENDING}, DeviceStatus.REJECTED),
    "disable": ({DeviceStatus.ACTIVE, DeviceStatus.PENDING}, DeviceStatus.DISABLED),
    "enable": ({DeviceStatus.DISABLED}, DeviceStatus.ACTIVE),
    "decommission": (
        {DeviceStatus.PENDING, DeviceStatus.ACTIVE, DeviceStatus.DISABLED, DeviceStatus.REJECTED},
        DeviceStatus.DECOMMISSIONED,
    ),
}


def transition_device(user, device: Device, action: str, *, ip: str | None = None) -> Device:
    """accept / reject / disable / enable / decommission, with the row locked so two operators
    clicking at once cannot both act on the old state."""
    allowed, target = _TRANSITIONS[action]
    with transaction.atomic():
        device = Device.objects.select_for_update().get(pk=device.pk)
        if device.status not in allowed:
            raise InvalidTransition(f"cannot {action} a device that is {device.status}")
        before = device.snapshot()
        device.status = target
        device.save(update_fields=["status", "updated_at"])
        if target in (DeviceStatus.REJECTED, DeviceStatus.DECOMMISSIONED):
            device.credentials.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        audit.record(user, f"device.{action}", device, before=before, after=device.snapshot(), ip=ip)
    return device


def update_device(user, device: Device, *, ip: str | None = None, **changes) -> Device:
    """Change a device's name and/or labels."""
    with transaction.atomic():
        device = Device.objects.select_for_update().get(pk=device.pk)
        before = device.snapshot()
        for key in ("name", "labels"):
            if key in changes:
                setattr(device, key, changes[key])
        if device.snapshot() != before:
            device.save()
            audit.record(user, "device.update", device, before=before, after=device.snapshot(), ip=ip)
    return device


def preprovision_device(user, *, name: str, fingerprint: str, labels: dict | None = None,
                        ip: str | None = None) -> Device:
    """An operator registers a device ahead of its agent: it is admitted when an agent with this
    fingerprint enrolls, whatever the token's auto-accept setting."""
    with transaction.atomic():
        device = Device.objects.create(
            name=name, fingerprint=fingerprint, labels=labels or {}, status=DeviceStatus.ACTIVE
        )
        audit.record(user, "device.preprovision", device, after=device.snapshot(), ip=ip)
    return device


def revoke_device_credentials(user, device: Device, *, ip: str | None = None) -> int:
    """Revoke every live token of a device; it must enroll again."""
    with transaction.atomic():
        count = device.credentials.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        audit.record(user, "device.revoke_credentials", device, after={"revoked": count}, ip=ip)
    return count


def rotate_device_credential(device: Device, principal=None, *, ip: str | None = None) -> str:
    """The agent asks for a new token; the old one stops working at once."""
    with transaction.atomic():
        token = device.issue_credential()
        audit.record(principal, "device.rotate_credential", device, ip=ip)
    return token


# --- Users' API tokens ------------------------------------------------------------------------


def create_api_token(actor, user, *, name: str, expires_at: datetime | None = None,
                     ip: str | None = None) -> NewSecret:
    token = new_token(USER_PREFIX)
    with transaction.atomic():
        obj = ApiToken.objects.create(
            user=user, name=name, token_hash=hash_token(token), prefix=display_prefix(token),
            expires_at=expires_at,
        )
        audit.record(actor, "api_token.create", obj, after={"user": user.get_username(), "name": name}, ip=ip)
    return NewSecret(obj, token)


def revoke_api_token(actor, token: ApiToken, *, ip: str | None = None) -> ApiToken:
    with transaction.atomic():
        token = ApiToken.objects.select_for_update().get(pk=token.pk)
        if token.revoked_at is None:
            token.revoked_at = timezone.now()
            token.save(update_fields=["revoked_at"])
            audit.record(actor, "api_token.revoke", token, after={"revoked_at": token.revoked_at.isoformat()}, ip=ip)
    return token


# --- operators' accounts ------------------------------------------------------------------------

UNSET = object()


class SelfLockout(Exception):
    """An admin may not take their own admin role or deactivate themselves (answered 403)."""


def set_role(user, role: str | None) -> None:
    """Put the user in exactly one role group (or none)."""
    from django.contrib.auth.models import Group

    from .roles import ROLES, role_group

    user.groups.remove(*Group.objects.filter(name__in=ROLES))
    if role:
        user.groups.add(role_group(role))
    user._edgefleet_role = "unset"  # role_of reads the groups again


def create_user(actor, *, username: str, email: str = "", password: str | None = None, role: str | None = None,
                is_active: bool = True, ip: str | None = None):
    """A new operator account (without a password: unusable until one is set), audited."""
    from django.contrib.auth import get_user_model

    with transaction.atomic():
        user = get_user_model().objects.create_user(username, email=email, password=password or None,
                                                    is_active=is_active)
        set_role(user, role)
        audit.record(actor, "user.create", user, after={"username": user.username, "role": role or None}, ip=ip)
    return user


def update_user(actor, user, *, role=UNSET, is_active: bool | None = None, password: str | None = None,
                ip: str | None = None, **fields):
    """Change an account's role, active flag, password or plain fields (``email``, ``username``),
    audited. Refuses (``SelfLockout``) an admin demoting or deactivating themselves, whichever
    way they ask."""
    from .roles import ADMIN, role_of

    if user.pk == getattr(actor, "pk", None) and ((role is not UNSET and role != ADMIN) or is_active is False):
        raise SelfLockout("You cannot remove your own admin role or deactivate yourself; ask another admin.")
    with transaction.atomic():
        before = {"role": role_of(user), "is_active": user.is_active}
        changed = []
        for name, value in fields.items():
            setattr(user, name, value)
            changed.append(name)
        if is_active is not None and is_active != user.is_active:
            user.is_active = is_active
            changed.append("is_active")
        if password:
            user.set_password(password)
            changed.append("password")
        if changed:
            user.save(update_fields=changed)
        if role is not UNSET:
            set_role(user, role)
        audit.record(actor, "user.update", user, before=before,
                     after={"role": role_of(user), "is_active": user.is_active}, ip=ip)
    return user
