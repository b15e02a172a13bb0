"""Projects and their members."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import IntegrityError
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation import services
from annotation.api.errors import Conflict
from annotation.api.pagination import IdCursorPagination
from annotation.api.views.base import AdminOnly, ProjectScopedMixin
from annotation.models import Membership, Project, Role
from annotation.selectors import projects_for_user
from annotation.services import PROJECT_EDITABLE_FIELDS

PROJECT_FIELDS = list(PROJECT_EDITABLE_FIELDS)


# The model's check constraints, as field rules, so a bad value is named by its field.
FIELD_RULES = {
    "overlap": {"min_value": 1, "max_value": 1000},
    "gold_rate": {"min_value": 0.0, "max_value": 1.0},
    "lease_seconds": {"min_value": 30, "max_value": 7 * 24 * 3600},
    "retrain_threshold": {"min_value": 1, "max_value": 2**31 - 1},
}


class ProjectOutput(serializers.ModelSerializer):
    class Meta:
        model = Project
        fields = ["id", "slug", *PROJECT_FIELDS, "created_at"]


class ProjectInput(serializers.ModelSerializer):
    class Meta:
        model = Project
        fields = ["slug", *PROJECT_FIELDS]
        # Uniqueness is left to the service and the database, so a clash is one clear 409.
        extra_kwargs = {"slug": {"validators": []}, **FIELD_RULES}


class ProjectUpdateInput(serializers.ModelSerializer):
    class Meta:
        model = Project
        fields = PROJECT_FIELDS
        extra_kwargs = FIELD_RULES


class ProjectListCreateApi(generics.ListAPIView):
    """The projects you work in (staff: all). POST creates one (staff only)."""

    serializer_class = ProjectOutput
    pagination_class = IdCursorPagination

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Project.objects.none()
        return projects_for_user(user=self.request.user)

    @extend_schema(request=ProjectInput, responses={201: ProjectOutput})
    def post(self, request):
        if not request.user.is_staff:
            raise PermissionDenied("Only staff can create projects.")
        data = ProjectInput(data=request.data)
        data.is_valid(raise_exception=True)
        if Project.objects.filter(slug=data.validated_data["slug"]).exists():
            raise Conflict(f"A project with slug {data.validated_data['slug']!r} exists.")
        try:
            project = services.project_create(**data.validated_data)
        except IntegrityError:
            raise Conflict(f"A project with slug {data.validated_data['slug']!r} exists.") from None
        return Response(ProjectOutput(project).data, status=status.HTTP_201_CREATED)


class ProjectDetailApi(ProjectScopedMixin, APIView):
    """A project's settings; PATCH changes them (project admins)."""

    admin_methods = frozenset({"PATCH"})

    @extend_schema(responses=ProjectOutput)
    def get(self, request, slug: str):
        return Response(ProjectOutput(self.project).data)

    @extend_schema(request=ProjectUpdateInput, responses=ProjectOutput)
    def patch(self, request, slug: str):
        data = ProjectUpdateInput(self.project, data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        project = services.project_update(project=self.project, **data.validated_data)
        return Response(ProjectOutput(project).data)


class MemberOutput(serializers.ModelSerializer):
    user_id = serializers.IntegerField()
    username = serializers.CharField(source="user.username")

    class Meta:
        model = Membership
        fields = ["user_id", "username", "role", "created_at"]


class MemberListSetApi(AdminOnly, ProjectScopedMixin, generics.ListAPIView):
    """A project's members (project admins). PUT adds a user or changes their role."""

    serializer_class = MemberOutput
    pagination_class = IdCursorPagination

    class MemberSetInput(serializers.Serializer):
        username = serializers.CharField(max_length=150)
        role = serializers.ChoiceField(choices=Role.choices, default=Role.ANNOTATOR)

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Membership.objects.none()
        return Membership.objects.filter(project=self.project).select_related("user")

    @extend_schema(request=MemberSetInput, responses=MemberOutput)
    def put(self, request, slug: str):
        data = self.MemberSetInput(data=request.data)
        data.is_valid(raise_exception=True)
        user = get_user_model().objects.filter(username=data.validated_data["username"], is_active=True).first()
        if user is None:
            raise serializers.ValidationError({"username": ["No active user with this username."]})
        membership = services.membership_set(project=self.project, user=user, role=data.validated_data["role"])
        return Response(MemberOutput(membership).data)


class MemberRemoveApi(AdminOnly, ProjectScopedMixin, APIView):
    """Removes a user from the project (project admins). Their labels stay."""

    @extend_schema(request=None, responses={204: None})
    def delete(self, request, slug: str, user_id: int):
        user = get_user_model().objects.filter(pk=user_id).first()
        if user is None or not services.membership_remove(project=self.project, user=user):
            raise NotFound("No such member.")
        return Response(status=status.HTTP_204_NO_CONTENT)
