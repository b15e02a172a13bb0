"""The annotator queue over HTTP: lease the next comparison, submit a label, skip. The rules
(overlap, leases, gold items, idempotent retries) live in annotation.queue; this only translates."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.exceptions import APIException, PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation import queue
from annotation.api.errors import Conflict
from annotation.api.pagination import IdCursorPagination
from annotation.api.views.base import IdField, ProjectScopedMixin, validated_query
from annotation.api.views.preferences import PreferenceOutput
from annotation.models import Assignment, AssignmentStatus, Choice, Comparison, Side, Strength


def _translate(exc: queue.QueueError) -> APIException:
    if exc.code == "invalid":
        return serializers.ValidationError({exc.field or "non_field_errors": [exc.message]})
    # not_leased, lease_expired, already_labelled: the request was well formed, the state refuses it.
    return Conflict(exc.message)


class TextOutput(serializers.Serializer):
    id = serializers.IntegerField()
    text = serializers.CharField()


class LeaseOutput(serializers.Serializer):
    comparison_id = serializers.IntegerField()
    prompt = serializers.JSONField(help_text="A string, or a list of {role, content} turns.")
    response_a = TextOutput()
    response_b = TextOutput()
    shown_left = serializers.ChoiceField(choices=Side.choices, help_text="Which response a UI should put on the left.")
    leased_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()


class QueueNextApi(ProjectScopedMixin, APIView):
    """Leases the next comparison to label (or renews the one you hold): 200 with the texts, or
    204 when there is nothing left for you. Choices are named by response (a, b), whatever side a
    UI shows them on."""

    @extend_schema(request=None, responses={200: LeaseOutput, 204: OpenApiResponse(description="Queue empty.")})
    def post(self, request, slug: str):
        assignment = queue.assignment_next(project=self.project, annotator=request.user)
        if assignment is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        queue.assignment_mark_shown(assignment=assignment)
        comparison = Comparison.objects.select_related("prompt", "response_a", "response_b").get(
            pk=assignment.comparison_id
        )
        prompt = comparison.prompt
        return Response(
            LeaseOutput(
                {
                    "comparison_id": comparison.pk,
                    "prompt": prompt.messages if prompt.messages is not None else prompt.text,
                    "response_a": comparison.response_a,
                    "response_b": comparison.response_b,
                    "shown_left": assignment.shown_left,
                    "leased_at": assignment.leased_at,
                    "expires_at": assignment.expires_at,
                }
            ).data
        )


class QueueSubmitApi(ProjectScopedMixin, APIView):
    """Labels a comparison you hold: 201 with the preference, or 200 with the same preference when
    this is a retry of a submit that already went through. 409 when the lease is gone."""

    class SubmitInput(serializers.Serializer):
        comparison_id = IdField()
        choice = serializers.ChoiceField(choices=Choice.choices)
        strength = serializers.ChoiceField(
            choices=Strength.choices, required=False, allow_null=True, help_text="Only with choice a or b."
        )
        rationale = serializers.CharField(required=False, allow_blank=True, max_length=10_000, default="")
        time_spent_ms = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=2**31 - 1)
        shown_left = serializers.ChoiceField(choices=Side.choices, required=False, allow_null=True)

    @extend_schema(request=SubmitInput, responses={200: PreferenceOutput, 201: PreferenceOutput})
    def post(self, request, slug: str):
        data = self.SubmitInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            preference, created = queue.preference_submit(
                project=self.project, annotator=request.user, **data.validated_data
            )
        except queue.QueueError as exc:
            raise _translate(exc) from None
        return Response(
            PreferenceOutput(preference).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class AssignmentOutput(serializers.ModelSerializer):
    annotator = serializers.CharField(source="annotator.username")

    class Meta:
        model = Assignment
        fields = [
            "id",
            "comparison_id",
            "annotator",
            "status",
            "shown_left",
            "leased_at",
            "expires_at",
            "first_shown_at",
            "skip_reason",
        ]
        read_only_fields = fields


class QueueSkipApi(ProjectScopedMixin, APIView):
    """Gives back a comparison you hold without labelling it; it is not offered to you again."""

    class SkipInput(serializers.Serializer):
        comparison_id = IdField()
        reason = serializers.CharField(max_length=1000, help_text="Why you skip it (e.g. 'needs expertise').")

    @extend_schema(request=SkipInput, responses=AssignmentOutput)
    def post(self, request, slug: str):
        data = self.SkipInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            assignment = queue.assignment_skip(project=self.project, annotator=request.user, **data.validated_data)
        except queue.QueueError as exc:
            raise _translate(exc) from None
        return Response(AssignmentOutput(assignment).data)


class AssignmentListApi(ProjectScopedMixin, generics.ListAPIView):
    """Your assignments in the project, newest first (project admins: everyone's, filterable)."""

    serializer_class = AssignmentOutput
    pagination_class = IdCursorPagination

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=AssignmentStatus.choices, required=False)
        annotator = serializers.CharField(required=False, max_length=150, help_text="A username (admins).")

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Assignment.objects.none()
        filters = validated_query(self.FilterSerializer, self.request)
        qs = Assignment.objects.filter(project=self.project).select_related("annotator")
        if not self.access.is_admin:
            if filters.get("annotator", self.request.user.get_username()) != self.request.user.get_username():
                raise PermissionDenied("Annotators can list their own assignments only.")
            qs = qs.filter(annotator=self.request.user)
        elif "annotator" in filters:
            qs = qs.filter(annotator__in=get_user_model().objects.filter(username=filters["annotator"]))
        if "status" in filters:
            qs = qs.filter(status=filters["status"])
        return qs

    @extend_schema(parameters=[FilterSerializer])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)
