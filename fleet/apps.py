from django.apps import AppConfig


class FleetConfig(AppConfig):
    name = "fleet"
    verbose_name = "Fleet"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from . import schema  # noqa: F401  (registers the OpenAPI auth extensions)
        from .roles_sync import sync_role_permissions

        post_migrate.connect(sync_role_permissions, sender=self)
