from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from fleet import services
from fleet.api.fields import parse_label_args


class Command(BaseCommand):
    help = "Create an enrollment token for agents. Prints the token alone on the last line."

    def add_arguments(self, parser):
        parser.add_argument("--auto-accept", action="store_true", help="Devices are active at once.")
        parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                            help="Label applied to enrolling devices (repeatable).")
        parser.add_argument("--uses", type=int, default=None, help="Maximum number of devices (default: unlimited).")
        parser.add_argument("--expires-hours", type=float, default=None,
                            help="Lifetime in hours (default: EDGEFLEET_ENROLLMENT_TOKEN_TTL_HOURS).")
        parser.add_argument("--description", default="created from the command line")

    def handle(self, *args, **opts):
        try:
            labels = parse_label_args(opts["label"])
        except Exception as exc:  # ValueError or DRF ValidationError
            raise CommandError(str(getattr(exc, "detail", exc))) from exc
        if opts["uses"] is not None and opts["uses"] < 1:
            raise CommandError("--uses must be at least 1")
        expires_at = None
        if opts["expires_hours"] is not None:
            expires_at = timezone.now() + timedelta(hours=opts["expires_hours"])
        created = services.create_enrollment_token(
            None, description=opts["description"], auto_accept=opts["auto_accept"], labels=labels,
            max_uses=opts["uses"], expires_at=expires_at,
        )
        token = created.obj
        self.stderr.write(
            f"Enrollment token {token.prefix}… auto_accept={token.auto_accept} labels={token.labels} "
            f"max_uses={token.max_uses or 'unlimited'} expires={token.expires_at:%Y-%m-%d %H:%M} UTC. "
            "It is shown once:"
        )
        self.stdout.write(created.token)
