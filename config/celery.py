"""The Celery app: the one place that talks to Celery. Its settings are the CELERY_* names in
config/settings.py."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("rlhf")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
