"""``python manage.py compress MODEL.onnx --recipe NAME ...``: the compression engine's command
line (``compression.engine.cli``), unchanged, so the two can never disagree on their options."""

from __future__ import annotations

import argparse
import sys

from django.core.management.base import BaseCommand

from compression.engine import cli


class Command(BaseCommand):
    help = cli.build_parser().description

    def add_arguments(self, parser) -> None:
        parser.add_argument("args", nargs=argparse.REMAINDER, help="see --help")

    def run_from_argv(self, argv: list[str]) -> None:
        # argv is [prog, "compress", *engine arguments]; the engine parses (and --help prints)
        # them itself and its exit status is the command's.
        sys.exit(cli.main(argv[2:]))

    def print_help(self, prog_name: str, subcommand: str) -> None:
        parser = cli.build_parser()
        parser.prog = f"{prog_name} {subcommand}"
        parser.print_help()

    def handle(self, *args, **options):  # call_command("compress", ...) lands here
        sys.exit(cli.main(list(args)))
