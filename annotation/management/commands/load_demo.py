"""python manage.py load_demo

Creates the demo project from annotation/demo/demo.jsonl (prompts and responses written for this
project), a demo admin and two demo annotators, and prints their credentials. Running it again
changes nothing and prints the same credentials: passwords are generated once and kept in
var/demo_credentials.json, readable only by their owner.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from annotation import services
from annotation.jsonl import bounded_lines, read_records
from annotation.models import Project, Role

DEMO_FILE = Path(__file__).resolve().parents[2] / "demo" / "demo.jsonl"
GUIDELINES = """\
## How to judge

Pick the response a careful, honest expert would rather have written.

1. **Correct first.** A wrong answer loses to a shorter right one, however polished it looks.
2. **Helpful.** It answers what was asked, completely, without padding.
3. **Harmless.** For requests that could hurt someone, the better response declines the harmful
   part *and* offers a safe, useful alternative. Preaching without helping is not better.
4. **Code** must run. Check the edge cases, not only the happy path.

Use **tie** when neither is better, and **both bad** when you would not send either.
Strength: *slightly* for a close call, *much* when one is clearly unacceptable.
"""
USERS = [("demo-admin", Role.ADMIN, True), ("annotator1", Role.ANNOTATOR, False), ("annotator2", Role.ANNOTATOR, False)]


class Command(BaseCommand):
    help = "Load the demo project, a demo admin and two demo annotators; print their credentials."

    def handle(self, *args, **opts):
        with DEMO_FILE.open("rb") as stream:
            records = read_records(bounded_lines(stream))
        credentials, fresh = self._credentials()
        User = get_user_model()
        with transaction.atomic():
            project = Project.objects.filter(slug="demo").first() or services.project_create(
                name="Demo: helpful and harmless", slug="demo", guidelines=GUIDELINES, overlap=2
            )
            for username, role, staff in USERS:
                user = User.objects.filter(username=username).first()
                if user is None:
                    user = User(username=username, is_staff=staff, is_superuser=staff)
                if user.pk is None or username in fresh:
                    # A password generated just now is the one printed below, so it is the one set.
                    user.set_password(credentials[username])
                    user.save()
                services.membership_set(project=project, user=user, role=role)
            summary = services.preferences_import(project=project, records=records, source="demo")
        self.stdout.write(f"Demo project '{project.slug}': {summary}.")
        self.stdout.write("Demo accounts (passwords kept in var/demo_credentials.json):")
        for username, role, _ in USERS:
            self.stdout.write(f"  {username:<12} {credentials[username]:<24} {role}")

    def _credentials(self) -> tuple[dict[str, str], set[str]]:
        path = Path(settings.VAR_DIR) / "demo_credentials.json"
        stored = json.loads(path.read_text()) if path.exists() else {}
        fresh = {username for username, _, _ in USERS if username not in stored}
        for username in fresh:
            stored[username] = secrets.token_urlsafe(12)
        if fresh:
            path.write_text(json.dumps(stored, indent=2))
            path.chmod(0o600)
        return stored, fresh
