"""``python manage.py collect_artifacts [--dry-run] [--grace-hours 24]``: remove stored model,
variant and dataset files that no database row references any more (beat does it daily)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from compression import services


class Command(BaseCommand):
    help = "Remove stored artifact files that nothing references any more."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
        parser.add_argument("--grace-hours", type=float, default=24.0,
                            help="keep files placed less than this long ago (default 24)")

    def handle(self, *args, dry_run: bool = False, grace_hours: float = 24.0, **options) -> None:
        if grace_hours < 0:
            raise CommandError("--grace-hours must be 0 or more")
        found = services.collect_artifacts(grace_s=grace_hours * 3600, dry_run=dry_run)
        for c in found:
            self.stdout.write(f"{'would remove' if dry_run else 'removed'} {c.relpath} ({c.size_bytes} bytes)")
        total = sum(c.size_bytes for c in found)
        verb = "would free" if dry_run else "freed"
        self.stdout.write(self.style.SUCCESS(f"{len(found)} unreferenced entr{'y' if len(found) == 1 else 'ies'}, "
                                             f"{verb} {total} bytes"))
