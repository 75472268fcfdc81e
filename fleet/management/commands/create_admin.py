import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from fleet.roles import ADMIN, role_group


class Command(BaseCommand):
    help = (
        "Create the first admin. Idempotent: with --if-missing an existing user is left alone. "
        "Without --password a random password is generated and printed once."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--email", default="")
        parser.add_argument("--password", default=None)
        parser.add_argument("--if-missing", action="store_true", help="Do nothing if the user exists.")
        parser.add_argument("--password-file", default=None,
                            help="Also write the password to this file (mode 0600).")

    def handle(self, *args, **opts):
        User = get_user_model()
        user = User.objects.filter(username=opts["username"]).first()
        if user is not None and opts["if_missing"]:
            self.stdout.write(f"User {user.username!r} exists; left unchanged.")
            return
        password = opts["password"] or secrets.token_urlsafe(12)
        if user is None:
            user = User.objects.create_superuser(opts["username"], opts["email"], password)
        else:
            user.set_password(password)
            user.is_superuser = user.is_staff = user.is_active = True
            user.save()
        user.groups.add(role_group(ADMIN))
        if opts["password_file"]:
            import os

            fd = os.open(opts["password_file"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{user.username}\n{password}\n")
        self.stdout.write(f"Admin {user.username!r} password: {password}")
