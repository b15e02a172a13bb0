"""Preferences: annotators see their own labels only; project admins see everyone's."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.api.pagination import IdCursorPagination
from annotation.api.views.base import IdField, ProjectScopedMixin, validated_query
from annotation.models import Choice, Preference, Side


class PreferenceOutput(serializers.ModelSerializer):
    annotator = serializers.CharField(source="annotator.username")
    shown_left = serializers.ChoiceField(choices=Side.choices, allow_blank=True, help_text="Empty when not recorded.")

    class Meta:
        model = Preference
        fields = [
            "id",
            "comparison_id",
            "annotator_id",
            "annotator",
            "choice",
            "strength",
            "rationale",
            "shown_left",
            "time_spent_ms",
            "created_at",
        ]
        read_only_fields = fields


def visible_preferences(view) -> object:
    qs = Preference.objects.filter(project=view.project).select_related("annotator")
    # The rule the issue insists on: an annotator never sees another annotator's labels.
    return qs if view.access.is_admin else qs.filter(annotator=view.request.user)


class PreferenceListApi(ProjectScopedMixin, generics.ListAPIView):
    """A project's preferences, newest first. Annotators get their own only; admins everyone's,
    filterable by annotator."""

    serializer_class = PreferenceOutput
    pagination_class = IdCursorPagination

    class FilterSerializer(serializers.Serializer):
        annotator = serializers.CharField(required=False, max_length=150, help_text="A username (admins).")
        choice = serializers.ChoiceField(choices=Choice.choices, required=False)
        comparison = IdField(required=False)
        since = serializers.DateTimeField(required=False, help_text="Created at or after (ISO 8601).")
        until = serializers.DateTimeField(required=False, help_text="Created before (ISO 8601).")

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Preference.objects.none()
        filters = validated_query(self.FilterSerializer, self.request)
        qs = visible_preferences(self)
        if "annotator" in filters:
            user = get_user_model().objects.filter(username=filters["annotator"]).first()
            if not self.access.is_admin and user != self.request.user:
                raise PermissionDenied("Annotators can list their own preferences only.")
            qs = qs.filter(annotator=user) if user else qs.none()
        if "choice" in filters:
            qs = qs.filter(choice=filters["choice"])
        if "comparison" in filters:
            qs = qs.filter(comparison_id=filters["comparison"])
        if "since" in filters:
            qs = qs.filter(created_at__gte=filters["since"])
        if "until" in filters:
            qs = qs.filter(created_at__lt=filters["until"])
        return qs

    @extend_schema(parameters=[FilterSerializer])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class PreferenceDetailApi(ProjectScopedMixin, APIView):
    """One preference: your own, or any in the project for its admins."""

    @extend_schema(responses=PreferenceOutput)
    def get(self, request, slug: str, pk: int):
        preference = visible_preferences(self).filter(pk=pk).first()
        if preference is None:
            raise NotFound("No such preference among those you can see.")
        return Response(PreferenceOutput(preference).data)
