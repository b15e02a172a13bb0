"""python manage.py export_preferences --project SLUG [--format trl|conversational] [--output FILE]

Streams a project's preferences as JSONL in TRL's format (DESIGN.md, "Data contracts"), one row per
annotator label, in id order. The rows are read in chunks, so memory stays flat on any size.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotation.exports import as_conversational
from annotation.models import Project
from annotation.selectors import ExportFilters, iter_export_rows


class Command(BaseCommand):
    help = "Export a project's preferences as JSONL for TRL's RewardTrainer."

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="the project's slug")
        parser.add_argument("--format", choices=["trl", "conversational"], default="trl")
        parser.add_argument("--output", default="-", help="a file to write, or - for standard output")
        parser.add_argument("--include-ties", action="store_true", help="also export tie and both-bad labels")

    def handle(self, *args, **opts):
        project = Project.objects.filter(slug=opts["project"]).first()
        if project is None:
            raise CommandError(f"no project with slug {opts['project']!r}")
        rows = iter_export_rows(project=project, filters=ExportFilters(include_ties=opts["include_ties"]))
        shape = as_conversational if opts["format"] == "conversational" else (lambda row: row)
        if opts["output"] == "-":
            count = self._write(sys.stdout, rows, shape)
        else:
            path = Path(opts["output"])
            if not path.parent.is_dir():
                raise CommandError(f"{path.parent}: no such folder")
            # Written beside the target and renamed, so a failed export never leaves half a file
            # where a complete one is expected.
            partial = path.with_name(path.name + ".partial")
            with partial.open("w", encoding="utf-8") as out:
                count = self._write(out, rows, shape)
            partial.replace(path)
        self.stderr.write(f"Exported {count} preferences from {project.slug}.")

    @staticmethod
    def _write(out, rows, shape) -> int:
        count = 0
        for row in rows:
            out.write(json.dumps(shape(row), ensure_ascii=False) + "\n")
            count += 1
        return count
