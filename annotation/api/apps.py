from __future__ import annotations

from django.apps import AppConfig


class ApiConfig(AppConfig):
    """The REST API under /api/v1/. An app of its own so that its tables (API tokens) migrate
    apart from the annotation models."""

    name = "annotation.api"
    label = "api"
    verbose_name = "API"
