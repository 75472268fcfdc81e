from django.contrib import admin

from .models import ApiToken, AuditEvent, Device, DeviceCredential, EnrollmentToken


class CredentialInline(admin.TabularInline):
    model = DeviceCredential
    fields = ["prefix", "created_at", "revoked_at", "last_used_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = ["name", "status", "arch", "agent_version", "last_seen", "created_at"]
    list_filter = ["status", "arch"]
    search_fields = ["name", "hostname", "fingerprint"]
    readonly_fields = ["id", "inventory", "enrolled_at", "last_seen", "created_at", "updated_at"]
    inlines = [CredentialInline]


@admin.register(EnrollmentToken)
class EnrollmentTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix", "description", "auto_accept", "uses", "max_uses", "expires_at", "revoked_at"]
    readonly_fields = ["token_hash", "prefix", "uses", "created_by", "created_at"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "user", "prefix", "created_at", "expires_at", "revoked_at", "last_used_at"]
    readonly_fields = ["token_hash", "prefix", "created_at", "last_used_at"]


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "actor", "action", "object_type", "object_repr"]
    list_filter = ["action", "object_type"]
    search_fields = ["actor", "object_repr", "object_id"]
    readonly_fields = [f.name for f in AuditEvent._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
