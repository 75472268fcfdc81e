from django.contrib import admin

from .models import AIModel, CompressionJob, Dataset, ModelVersion, Variant


class VersionInline(admin.TabularInline):
    model = ModelVersion
    fields = ["version", "sha256", "size_bytes", "original_filename", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(AIModel)
class AIModelAdmin(admin.ModelAdmin):
    list_display = ["name", "created_by", "created_at"]
    search_fields = ["name", "description"]
    readonly_fields = ["created_by", "created_at"]
    inlines = [VersionInline]


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["model", "version", "sha256", "size_bytes", "created_at"]
    list_filter = ["model"]
    search_fields = ["model__name", "sha256", "original_filename"]
    # Files are content-addressed: the path and digest must never be edited by hand.
    readonly_fields = ["id", "model", "version", "sha256", "size_bytes", "file", "original_filename",
                       "metadata", "created_by", "created_at"]


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ["name", "model", "samples", "has_labels", "size_bytes", "created_at"]
    list_filter = ["model", "has_labels"]
    readonly_fields = ["id", "sha256", "size_bytes", "file", "samples", "has_labels", "metadata",
                       "created_by", "created_at"]


class VariantInline(admin.TabularInline):
    model = Variant
    fields = ["recipe", "status", "size_bytes", "recommended", "reason"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(CompressionJob)
class CompressionJobAdmin(admin.ModelAdmin):
    list_display = ["id", "version", "recipe", "status", "progress", "attempts", "created_at"]
    list_filter = ["status", "recipe"]
    readonly_fields = ["id", "version", "dataset", "recipe", "params", "constraints", "input_shapes",
                       "options", "status", "progress", "step", "log", "error", "report",
                       "recommended", "attempts", "created_by", "created_at", "started_at",
                       "finished_at"]
    inlines = [VariantInline]


@admin.register(Variant)
class VariantAdmin(admin.ModelAdmin):
    list_display = ["id", "source", "recipe", "status", "size_bytes", "recommended", "created_at"]
    list_filter = ["status", "recipe", "recommended"]
    search_fields = ["sha256", "source__model__name"]
    # A signature is only meaningful for the exact file: nothing here is editable.
    readonly_fields = [f.name for f in Variant._meta.fields]
