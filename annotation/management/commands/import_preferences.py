"""python manage.py import_preferences FILE --project SLUG

Loads JSONL in either shape of DESIGN.md (labelled pairs, or a prompt with its responses). Every
line is checked first; one bad line means a report of every bad line, a non-zero exit, and nothing
written. Rows already present are reused, so a second import of the same file adds nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from annotation import services
from annotation.jsonl import DEFAULT_MAX_LINE_BYTES, ImportFileError, bounded_lines, read_records
from annotation.models import Project


class Command(BaseCommand):
    help = "Import prompts, responses and labelled pairs from a JSONL file, all or nothing."

    def add_arguments(self, parser):
        parser.add_argument("file", help="a JSONL file, or - for standard input")
        parser.add_argument("--project", required=True, help="the project's slug")
        parser.add_argument("--create-project", action="store_true", help="create the project if it does not exist")
        parser.add_argument(
            "--source", default=services.DEFAULT_IMPORT_SOURCE, help="model name for responses that carry none"
        )
        parser.add_argument("--annotator", default="import", help="annotator name for labelled pairs that carry none")
        parser.add_argument(
            "--max-pairs", type=int, default=None, help="cap on comparisons made from one prompt's responses"
        )
        parser.add_argument("--max-line-bytes", type=int, default=DEFAULT_MAX_LINE_BYTES)

    def handle(self, *args, **opts):
        if opts["max_pairs"] is not None and opts["max_pairs"] < 1:
            raise CommandError("--max-pairs must be at least 1")
        records = self._read(opts["file"], opts["max_line_bytes"])
        try:
            with transaction.atomic():
                project = self._project(opts["project"], opts["create_project"])
                summary = services.preferences_import(
                    project=project,
                    records=records,
                    source=opts["source"],
                    annotator=opts["annotator"],
                    max_pairs_per_prompt=opts["max_pairs"],
                )
        except ImportFileError as exc:
            raise CommandError(f"{opts['file']}: nothing was imported.\n{exc.format()}") from None
        self.stdout.write(f"Imported {len(records)} records into {project.slug}: {summary}.")

    def _read(self, name: str, max_line_bytes: int):
        try:
            if name == "-":
                return read_records(bounded_lines(sys.stdin.buffer, max_line_bytes), max_line_bytes)
            path = Path(name)
            if not path.is_file():
                raise CommandError(f"{name}: no such file")
            with path.open("rb") as stream:
                return read_records(bounded_lines(stream, max_line_bytes), max_line_bytes)
        except ImportFileError as exc:
            raise CommandError(f"{name}: nothing was imported.\n{exc.format()}") from None

    def _project(self, slug: str, create: bool) -> Project:
        project = Project.objects.filter(slug=slug).first()
        if project is not None:
            return project
        if not create:
            raise CommandError(f"no project with slug {slug!r}; pass --create-project to create it")
        return services.project_create(name=slug, slug=slug)
