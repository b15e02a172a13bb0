"""Prompts, responses and comparisons: bulk import, listing, and pairing a prompt's responses."""

from __future__ import annotations

import io
import json

from django.db.models import Count
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation import services
from annotation.api.errors import (
    MAX_IMPORT_FILE_BYTES,
    JSONLinesParser,
    NDJSONParser,
    PayloadTooLarge,
    SizeLimitedJSONParser,
    SizeLimitedMultiPartParser,
    error_body,
)
from annotation.api.pagination import IdCursorPagination
from annotation.api.views.base import AdminOnly, IdField, ProjectScopedMixin
from annotation.jsonl import ImportFileError, LineError, bounded_lines, parse_line
from annotation.models import Choice, Comparison, Prompt

MAX_ERRORS_SHOWN = 1000


class ImportOptions(serializers.Serializer):
    source = serializers.CharField(
        max_length=200, default=services.DEFAULT_IMPORT_SOURCE, help_text="Source name for responses without one."
    )
    annotator = serializers.CharField(
        max_length=100, default="import", help_text="Name for labels without an `annotator`."
    )
    max_pairs_per_prompt = serializers.IntegerField(
        min_value=1, max_value=100_000, required=False, help_text="Cap on pairs made from a `responses` record."
    )


class ImportJsonInput(ImportOptions):
    records = serializers.ListField(
        child=serializers.JSONField(),
        allow_empty=False,
        help_text='Each as a JSONL line: {"prompt", "chosen", "rejected", ...} or {"prompt", "responses": [...]}.',
    )


class ImportUploadInput(ImportOptions):
    file = serializers.FileField(help_text="A JSONL file, one record a line.")


class ImportSummaryOutput(serializers.Serializer):
    prompts_created = serializers.IntegerField()
    responses_created = serializers.IntegerField()
    comparisons_created = serializers.IntegerField()
    preferences_created = serializers.IntegerField()
    preferences_existing = serializers.IntegerField()


def _refusal(errors: list[tuple[int, str]], key) -> Response:
    shown: dict[str, list[str]] = {}
    for line, reason in errors[:MAX_ERRORS_SHOWN]:
        shown.setdefault(key(line), []).append(reason)
    more = f" (the first {MAX_ERRORS_SHOWN} are listed)" if len(errors) > MAX_ERRORS_SHOWN else ""
    message = f"The import was refused: {len(errors)} bad record(s){more}. Nothing was written."
    return Response(error_body(message, shown), status=status.HTTP_400_BAD_REQUEST)


def _records_from_json(items: list) -> list:
    records, errors = [], []
    for i, item in enumerate(items):
        try:
            # Each item goes through the JSONL reader exactly as a file line would, so the API and
            # the management command accept and refuse the same records.
            raw = json.dumps(item, ensure_ascii=False, allow_nan=False).encode("utf-8")
            record = parse_line(raw, i + 1)
        except LineError as exc:
            errors.append((i + 1, str(exc)))
            continue
        except (UnicodeEncodeError, ValueError):
            errors.append((i + 1, "contains a value that is not valid JSON text (a lone surrogate or NaN)"))
            continue
        if record is None:
            errors.append((i + 1, "is empty"))
        else:
            records.append(record)
    if errors:
        raise ImportFileError(errors)
    return records


class ProjectImportApi(AdminOnly, ProjectScopedMixin, APIView):
    """Bulk import (project admins), all or nothing. Three ways to send the same records:
    a JSON body `{"records": [...]}`, a multipart upload of a JSONL `file`, or a raw JSONL body
    (`Content-Type: application/jsonl`, options as query parameters). One bad record refuses the
    whole import with a 400 that lists every bad record; importing the same data twice adds nothing."""

    parser_classes = [SizeLimitedJSONParser, SizeLimitedMultiPartParser, JSONLinesParser, NDJSONParser]

    @extend_schema(
        request={
            "application/json": ImportJsonInput,
            "multipart/form-data": ImportUploadInput,
            "application/jsonl": OpenApiTypes.BINARY,
        },
        parameters=[ImportOptions],
        responses={200: ImportSummaryOutput, 201: ImportSummaryOutput},
        examples=[
            OpenApiExample(
                "Labelled pairs",
                request_only=True,
                media_type="application/json",
                value={"records": [{"prompt": "2+2?", "chosen": "4", "rejected": "5", "margin": 2}]},
            )
        ],
    )
    def post(self, request, slug: str):
        content_type = (request.content_type or "").split(";")[0].strip().lower()
        if content_type in (JSONLinesParser.media_type, NDJSONParser.media_type):
            options = ImportOptions(data=request.query_params)
            options.is_valid(raise_exception=True)
            opts = dict(options.validated_data)
            # An empty body never reaches the parser; it is an empty file.
            stream = request.data.get("jsonl") or io.BytesIO()
            key = lambda n: f"line {n}"  # noqa: E731
            lines_from = stream
        elif content_type == "multipart/form-data":
            data = ImportUploadInput(data=request.data)
            data.is_valid(raise_exception=True)
            opts = dict(data.validated_data)
            upload = opts.pop("file")
            if upload.size > MAX_IMPORT_FILE_BYTES:
                raise PayloadTooLarge(f"The file is over the limit of {MAX_IMPORT_FILE_BYTES:,} bytes.")
            key = lambda n: f"file: line {n}"  # noqa: E731
            lines_from = upload
        else:
            body = request.data
            data = ImportJsonInput(data={"records": body} if isinstance(body, list) else body)
            data.is_valid(raise_exception=True)
            opts = dict(data.validated_data)
            items = opts.pop("records")
            key = lambda n: f"records[{n - 1}]"  # noqa: E731
            lines_from = None
        # A file is read by a thread of its own while the chunks before are written (services.ChunkReader).
        chunks = None if lines_from is None else services.ChunkReader(bounded_lines(lines_from))
        try:
            given = {"chunks": chunks} if chunks is not None else {"records": _records_from_json(items)}
            summary = services.preferences_import(
                project=self.project,
                source=opts["source"],
                annotator=opts["annotator"],
                max_pairs_per_prompt=opts.get("max_pairs_per_prompt"),
                **given,
            )
        except ImportFileError as exc:
            return _refusal(exc.errors, lambda n: key(n) if n else "non_field_errors")
        finally:
            if chunks is not None:
                chunks.close()
        created = summary.prompts_created + summary.responses_created + summary.comparisons_created
        created += summary.preferences_created
        return Response(
            ImportSummaryOutput(summary).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class ResponseOutput(serializers.Serializer):
    id = serializers.IntegerField()
    text = serializers.CharField()
    source = serializers.CharField()
    policy_version_id = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()


class PromptOutput(serializers.ModelSerializer):
    n_responses = serializers.IntegerField()
    n_comparisons = serializers.IntegerField()
    messages = serializers.JSONField(allow_null=True)

    class Meta:
        model = Prompt
        fields = ["id", "text", "messages", "is_eval", "n_responses", "n_comparisons", "created_at"]


class PromptDetailOutput(PromptOutput):
    responses = ResponseOutput(many=True)

    class Meta(PromptOutput.Meta):
        fields = [*PromptOutput.Meta.fields, "responses"]


def _prompts(project):
    return Prompt.objects.filter(project=project).annotate(
        n_responses=Count("responses", distinct=True), n_comparisons=Count("comparisons", distinct=True)
    )


class PromptListApi(AdminOnly, ProjectScopedMixin, generics.ListAPIView):
    """A project's prompts, newest first (project admins)."""

    serializer_class = PromptOutput
    pagination_class = IdCursorPagination

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Prompt.objects.none()
        return _prompts(self.project)


class PromptDetailApi(AdminOnly, ProjectScopedMixin, APIView):
    """One prompt with its responses (project admins)."""

    @extend_schema(responses=PromptDetailOutput)
    def get(self, request, slug: str, pk: int):
        prompt = _prompts(self.project).filter(pk=pk).prefetch_related("responses").first()
        if prompt is None:
            raise NotFound("No such prompt in this project.")
        return Response(PromptDetailOutput(prompt).data)


class ComparisonOutput(serializers.ModelSerializer):
    gold_choice = serializers.ChoiceField(choices=Choice.choices, allow_blank=True, help_text="Empty unless gold.")

    class Meta:
        model = Comparison
        fields = ["id", "prompt_id", "response_a_id", "response_b_id", "is_gold", "gold_choice", "label_count"]
        read_only_fields = fields


class PromptComparisonsCreateApi(AdminOnly, ProjectScopedMixin, APIView):
    """Pairs a prompt's responses into comparisons (project admins): every pair, or at most
    `max_pairs` for the prompt in total. Pairs that exist already are kept, not duplicated."""

    class PairingInput(serializers.Serializer):
        max_pairs = serializers.IntegerField(min_value=1, max_value=100_000, required=False, allow_null=True)

    @extend_schema(request=PairingInput, responses={201: ComparisonOutput(many=True)})
    def post(self, request, slug: str, pk: int):
        data = self.PairingInput(data=request.data)
        data.is_valid(raise_exception=True)
        prompt = Prompt.objects.filter(project=self.project, pk=pk).first()
        if prompt is None:
            raise NotFound("No such prompt in this project.")
        created = services.comparisons_create_for_prompt(prompt=prompt, max_pairs=data.validated_data.get("max_pairs"))
        return Response(ComparisonOutput(created, many=True).data, status=status.HTTP_201_CREATED)


class ComparisonListApi(AdminOnly, ProjectScopedMixin, generics.ListAPIView):
    """A project's comparisons, newest first (project admins; the gold answers are here)."""

    serializer_class = ComparisonOutput
    pagination_class = IdCursorPagination

    class FilterSerializer(serializers.Serializer):
        prompt = IdField(required=False)
        is_gold = serializers.BooleanField(required=False, allow_null=True, default=None)

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Comparison.objects.none()
        filters = self.FilterSerializer(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        qs = Comparison.objects.filter(project=self.project)
        if "prompt" in filters.validated_data:
            qs = qs.filter(prompt_id=filters.validated_data["prompt"])
        if filters.validated_data.get("is_gold") is not None:
            qs = qs.filter(is_gold=filters.validated_data["is_gold"])
        return qs

    @extend_schema(parameters=[FilterSerializer])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class ComparisonDetailOutput(ComparisonOutput):
    prompt = serializers.SerializerMethodField()
    response_a = ResponseOutput()
    response_b = ResponseOutput()

    class Meta(ComparisonOutput.Meta):
        fields = [*ComparisonOutput.Meta.fields, "prompt", "response_a", "response_b", "created_at"]
        read_only_fields = fields

    def get_prompt(self, obj) -> str | list:
        return obj.prompt.messages if obj.prompt.messages is not None else obj.prompt.text


class ComparisonDetailApi(AdminOnly, ProjectScopedMixin, APIView):
    """One comparison with its texts (project admins)."""

    @extend_schema(responses=ComparisonDetailOutput)
    def get(self, request, slug: str, pk: int):
        comparison = (
            Comparison.objects.filter(project=self.project, pk=pk)
            .select_related("prompt", "response_a", "response_b")
            .first()
        )
        if comparison is None:
            raise NotFound("No such comparison in this project.")
        return Response(ComparisonDetailOutput(comparison).data)
