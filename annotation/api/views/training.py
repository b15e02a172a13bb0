"""Training runs and model versions (project admins)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.exceptions import APIException, NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.api.errors import Conflict
from annotation.api.pagination import IdCursorPagination
from annotation.api.views.base import AdminOnly, ProjectScopedMixin, validated_query
from training import services
from training.models import ModelKind, ModelVersion, RunKind, RunStatus, TrainingRun


def _translate(exc: services.TrainingError) -> APIException:
    if exc.code == "conflict":
        return Conflict(exc.message)
    return serializers.ValidationError({"non_field_errors": [exc.message]})


class TrainingRunOutput(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)
    config = serializers.JSONField()
    metrics = serializers.JSONField()

    class Meta:
        model = TrainingRun
        fields = [
            "id",
            "kind",
            "status",
            "config",
            "progress",
            "step",
            "total_steps",
            "eta_seconds",
            "metrics",
            "error",
            "data_hash",
            "data_watermark",
            "parent_model_id",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
            "heartbeat_at",
        ]
        read_only_fields = fields


class TrainingRunListCreateApi(AdminOnly, ProjectScopedMixin, generics.ListAPIView):
    """A project's training runs, newest first. POST queues a new run of a kind (a worker picks it
    up); 409 when one of that kind is already queued or running."""

    serializer_class = TrainingRunOutput
    pagination_class = IdCursorPagination

    class FilterSerializer(serializers.Serializer):
        kind = serializers.ChoiceField(choices=RunKind.choices, required=False)
        status = serializers.ChoiceField(choices=RunStatus.choices, required=False)

    class TrainingRunCreateInput(serializers.Serializer):
        kind = serializers.ChoiceField(choices=RunKind.choices)
        config = serializers.DictField(required=False, default=dict, help_text="Overrides of the kind's defaults.")

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return TrainingRun.objects.none()
        filters = validated_query(self.FilterSerializer, self.request)
        return TrainingRun.objects.filter(project=self.project, **filters).select_related("created_by")

    @extend_schema(parameters=[FilterSerializer])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(request=TrainingRunCreateInput, responses={201: TrainingRunOutput})
    def post(self, request, slug: str):
        data = self.TrainingRunCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            run = services.training_run_create(
                project=self.project,
                kind=data.validated_data["kind"],
                config=data.validated_data["config"],
                created_by=request.user,
            )
        except services.TrainingError as exc:
            raise _translate(exc) from None
        return Response(TrainingRunOutput(run).data, status=status.HTTP_201_CREATED)


def _run(project, pk: int) -> TrainingRun:
    run = TrainingRun.objects.filter(project=project, pk=pk).select_related("created_by").first()
    if run is None:
        raise NotFound("No such training run in this project.")
    return run


class TrainingRunDetailApi(AdminOnly, ProjectScopedMixin, APIView):
    """One run with its progress, ETA and metrics."""

    @extend_schema(responses=TrainingRunOutput)
    def get(self, request, slug: str, pk: int):
        return Response(TrainingRunOutput(_run(self.project, pk)).data)


class TrainingRunCancelApi(AdminOnly, ProjectScopedMixin, APIView):
    """Cancels a queued or running run; 409 when it has already finished."""

    @extend_schema(request=None, responses=TrainingRunOutput)
    def post(self, request, slug: str, pk: int):
        try:
            run = services.training_run_cancel(run=_run(self.project, pk))
        except services.TrainingError as exc:
            raise _translate(exc) from None
        return Response(TrainingRunOutput(run).data)


class ModelVersionOutput(serializers.ModelSerializer):
    metrics = serializers.JSONField()

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "kind",
            "version",
            "label",
            "base",
            "artifact_path",
            "parent_id",
            "run_id",
            "metrics",
            "is_active",
            "created_at",
            "promoted_at",
        ]
        read_only_fields = fields


class ModelVersionListApi(AdminOnly, ProjectScopedMixin, generics.ListAPIView):
    """A project's reward models and policies, newest first; `is_active` marks the ones in use."""

    serializer_class = ModelVersionOutput
    pagination_class = IdCursorPagination

    class FilterSerializer(serializers.Serializer):
        kind = serializers.ChoiceField(choices=ModelKind.choices, required=False)

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return ModelVersion.objects.none()
        filters = validated_query(self.FilterSerializer, self.request)
        return ModelVersion.objects.filter(project=self.project, **filters)

    @extend_schema(parameters=[FilterSerializer])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class ModelVersionPromoteApi(AdminOnly, ProjectScopedMixin, APIView):
    """Makes this version the active one of its kind."""

    @extend_schema(request=None, responses=ModelVersionOutput)
    def post(self, request, slug: str, pk: int):
        version = ModelVersion.objects.filter(project=self.project, pk=pk).first()
        if version is None:
            raise NotFound("No such model version in this project.")
        return Response(ModelVersionOutput(services.model_version_promote(version=version)).data)


class ModelVersionRollbackApi(AdminOnly, ProjectScopedMixin, APIView):
    """Makes the version below the active one active again; 409 when there is none."""

    class RollbackInput(serializers.Serializer):
        kind = serializers.ChoiceField(choices=ModelKind.choices)

    @extend_schema(request=RollbackInput, responses=ModelVersionOutput)
    def post(self, request, slug: str):
        data = self.RollbackInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            version = services.model_version_rollback(project=self.project, kind=data.validated_data["kind"])
        except services.TrainingError as exc:
            raise _translate(exc) from None
        return Response(ModelVersionOutput(version).data)
