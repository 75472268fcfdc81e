"""Dashboard forms. They only parse and validate input; the views hand the cleaned data to
``fleet.services`` (or the compression services), which do the work and write the audit log."""

from __future__ import annotations

import re
from datetime import timedelta

from django import forms
from django.contrib.auth import get_user_model
from django.utils import timezone

from .roles import ROLES

_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}$")
MAX_LABELS = 32


def parse_labels(text: str) -> dict[str, str]:
    """'site=berlin, line=3' (commas or new lines) -> {'site': 'berlin', 'line': '3'}.

    Raises ``forms.ValidationError`` naming the offending pair, so the operator sees exactly
    what to fix."""
    labels: dict[str, str] = {}
    for raw in re.split(r"[,\n]", text or ""):
        raw = raw.strip()
        if not raw:
            continue
        key, sep, value = raw.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise forms.ValidationError(f"“{raw}” is not key=value.")
        if not _LABEL_KEY.match(key):
            raise forms.ValidationError(
                f"label key “{key}” must start with a letter or digit and use only letters, "
                "digits, '_', '-', '.', '/' (63 characters at most)."
            )
        if len(value) > 100:
            raise forms.ValidationError(f"the value of “{key}” is longer than 100 characters.")
        labels[key] = value
    if len(labels) > MAX_LABELS:
        raise forms.ValidationError(f"at most {MAX_LABELS} labels per device.")
    return labels


def labels_text(labels: dict | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted((labels or {}).items()))


class LabelsField(forms.CharField):
    """A text box of key=value pairs that cleans to a dict."""

    def to_python(self, value):
        return parse_labels(super().to_python(value) or "")


class EnrollmentTokenForm(forms.Form):
    description = forms.CharField(max_length=200, required=False,
                                  help_text="Where or what it is for, e.g. “Berlin line 3 cameras”.")
    auto_accept = forms.BooleanField(required=False,
                                     help_text="Devices enrolling with it are active at once; "
                                               "otherwise they wait in Pending admissions.")
    labels = LabelsField(required=False, help_text="Applied to every device that enrolls with it, "
                                                   "e.g. site=berlin, line=3.")
    max_uses = forms.IntegerField(min_value=1, max_value=100_000, required=False,
                                  help_text="Empty: unlimited.")
    ttl_hours = forms.IntegerField(min_value=1, max_value=24 * 365, required=False,
                                   label="Valid for (hours)", help_text="Empty: the server default.")

    def expires_at(self):
        hours = self.cleaned_data.get("ttl_hours")
        return timezone.now() + timedelta(hours=hours) if hours else None


class LabelsForm(forms.Form):
    labels = LabelsField(required=False)


BULK_ACTIONS = [
    ("accept", "Accept"),
    ("disable", "Disable"),
    ("enable", "Enable"),
    ("add_labels", "Add labels"),
    ("remove_labels", "Remove label keys"),
]


class BulkActionForm(forms.Form):
    action = forms.ChoiceField(choices=BULK_ACTIONS)
    devices = forms.CharField(required=True, error_messages={"required": "Select at least one device."})
    labels = forms.CharField(required=False)

    def clean_devices(self):
        import uuid

        ids = []
        for raw in self.data.getlist("devices") if hasattr(self.data, "getlist") else [self.data["devices"]]:
            try:
                ids.append(uuid.UUID(str(raw)))
            except ValueError:
                raise forms.ValidationError(f"“{raw}” is not a device id.") from None
        if not ids:
            raise forms.ValidationError("Select at least one device.")
        if len(ids) > 1000:
            raise forms.ValidationError("At most 1,000 devices per bulk action.")
        return ids

    def clean(self):
        data = super().clean()
        action = data.get("action")
        text = data.get("labels") or ""
        if action == "add_labels":
            labels = parse_labels(text)
            if not labels:
                raise forms.ValidationError("Give the labels to add, e.g. site=berlin.")
            data["label_map"] = labels
        elif action == "remove_labels":
            keys = [k.strip() for k in re.split(r"[,\n]", text) if k.strip()]
            keys = [k.partition("=")[0].strip() for k in keys]
            if not keys:
                raise forms.ValidationError("Give the label keys to remove, e.g. site.")
            data["label_keys"] = keys
        return data


class UserCreateForm(forms.Form):
    username = forms.RegexField(regex=r"^[\w.@+-]{1,150}$", max_length=150,
                                error_messages={"invalid": "Letters, digits and @ . + - _ only."})
    email = forms.EmailField(required=False)
    role = forms.ChoiceField(choices=[(r, r) for r in ROLES])
    password = forms.CharField(widget=forms.PasswordInput, min_length=10,
                               help_text="At least 10 characters.")

    def clean_username(self):
        name = self.cleaned_data["username"]
        if get_user_model().objects.filter(username__iexact=name).exists():
            raise forms.ValidationError(f"A user named “{name}” already exists.")
        return name


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=[("", "no role")] + [(r, r) for r in ROLES], required=False)
    is_active = forms.BooleanField(required=False)


class ApiTokenForm(forms.Form):
    name = forms.CharField(max_length=100)
    ttl_days = forms.IntegerField(min_value=1, max_value=3650, required=False, label="Valid for (days)")


class ModelCreateForm(forms.Form):
    name = forms.SlugField(max_length=100, help_text="Lowercase letters, digits and dashes, e.g. defect-detector.")
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))


class CompressionJobForm(forms.Form):
    """The recipe picker; choices are filled in by the view from the engine's registry."""

    version = forms.ChoiceField()
    recipe = forms.ChoiceField()
    dataset = forms.ChoiceField(required=False)
    min_cosine = forms.FloatField(min_value=0, max_value=1, required=False, initial=0.99,
                                  label="Min cosine similarity")
    min_top1 = forms.FloatField(min_value=0, max_value=1, required=False, initial=0.99,
                                label="Min top-1 agreement")
    latency_slack = forms.FloatField(
        min_value=0, max_value=100, required=False, initial=0.05, label="Latency slack",
        help_text="How much slower than the original a variant may measure and still be accepted "
                  "(0.05 = 5 %, timer noise); latency is measured on the server's worker.")
    max_size_mb = forms.FloatField(min_value=0.001, required=False, label="Max size (MB)")
    max_latency_ms = forms.FloatField(min_value=0.001, required=False, label="Max latency p50 (ms)")
    input_shapes = forms.CharField(required=False, label="Input shapes",
                                   help_text="For symbolic dims: name=1,3,224,224 (one per line).")

    def __init__(self, *args, versions=(), recipes=(), datasets=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["version"].choices = list(versions)
        self.fields["recipe"].choices = list(recipes)
        self.fields["dataset"].choices = [("", "none: synthetic inputs")] + list(datasets)

    def clean_input_shapes(self):
        shapes: dict[str, list[int]] = {}
        for line in (self.cleaned_data.get("input_shapes") or "").splitlines():
            line = line.strip()
            if not line:
                continue
            name, sep, dims = line.partition("=")
            try:
                values = [int(d) for d in dims.split(",")]
            except ValueError:
                values = []
            if not sep or not name.strip() or not values or any(v <= 0 for v in values):
                raise forms.ValidationError(f"“{line}” is not name=1,3,224,224 with positive dims.")
            shapes[name.strip()] = values
        return shapes

    def constraints(self) -> dict:
        data = self.cleaned_data
        out = {}
        if data.get("min_cosine") is not None:
            out["cosine_min"] = data["min_cosine"]
        if data.get("min_top1") is not None:
            out["top1_min"] = data["min_top1"]
        if data.get("latency_slack") is not None:
            out["latency_slack"] = data["latency_slack"]
        if data.get("max_size_mb"):
            out["max_size_bytes"] = int(data["max_size_mb"] * 1_000_000)
        if data.get("max_latency_ms"):
            out["max_latency_ms"] = data["max_latency_ms"]
        return out
