"""What every project-scoped view shares: the access check and query-parameter validation."""

from __future__ import annotations

from rest_framework import serializers

from annotation.api.access import ProjectAccess, project_access

MAX_ID = 2**63 - 1


def validated_query(serializer_class: type[serializers.Serializer], request) -> dict:
    serializer = serializer_class(data=request.query_params)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


class ProjectScopedMixin:
    """Resolves `slug` to the project before the handler runs. `admin_methods` lists the HTTP
    methods that need the project's admin role; the others need membership."""

    admin_methods: frozenset[str] = frozenset()
    access: ProjectAccess

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if getattr(self, "swagger_fake_view", False):
            return
        self.access = project_access(user=request.user, slug=kwargs["slug"], admin=request.method in self.admin_methods)

    @property
    def project(self):
        return self.access.project


class AdminOnly:
    admin_methods = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})


class IdField(serializers.IntegerField):
    def __init__(self, **kwargs):
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", MAX_ID)
        super().__init__(**kwargs)
