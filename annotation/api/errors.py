"""Every error the API returns has one shape: {"message": str, "errors": {field: [str, ...]}}.

Clients (and the tests) rely on that shape for every status, so errors raised outside DRF's own
exceptions (Django's 404, a request body over the limit, a database refusing a value) are mapped
here too instead of falling through to an HTML page or a 500.
"""

from __future__ import annotations

import logging
import tempfile

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError
from django.http import Http404, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.parsers import BaseParser, JSONParser, MultiPartParser
from rest_framework.views import exception_handler as drf_exception_handler

logger = logging.getLogger(__name__)


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "payload_too_large"


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state."
    default_code = "conflict"


# A JSONL body or file is spooled to disk and read line by line, so it may be larger than a JSON
# body, which is parsed into memory whole (DATA_UPLOAD_MAX_MEMORY_SIZE).
MAX_IMPORT_FILE_BYTES = 512 * 1024 * 1024


def body_limit() -> int:
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 50 * 1024 * 1024


def _flatten(detail, path: str, out: dict[str, list[str]]) -> None:
    """Nested serializer errors to flat keys: {"records": [{"prompt": [..]}]} -> {"records[0].prompt": [..]}."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            _flatten(value, f"{path}.{key}" if path else str(key), out)
    elif isinstance(detail, list) and detail and all(not isinstance(x, (dict, list)) for x in detail):
        out.setdefault(path or "non_field_errors", []).extend(str(x) for x in detail)
    elif isinstance(detail, list):
        for i, value in enumerate(detail):
            if value:
                _flatten(value, f"{path}[{i}]", out)
    else:
        out.setdefault(path or "non_field_errors", []).append(str(detail))


def error_body(message: str, errors: dict[str, list[str]] | None = None) -> dict:
    return {"message": message, "errors": errors or {}}


def api_exception_handler(exc, context):
    if isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge(f"The request body is over the limit of {body_limit():,} bytes.")
    elif isinstance(exc, SuspiciousOperation):
        exc = exceptions.ParseError(str(exc) or "Malformed request.")
    elif isinstance(exc, DjangoValidationError):
        if hasattr(exc, "error_dict"):
            fields = {("non_field_errors" if k == "__all__" else k): v for k, v in exc.message_dict.items()}
        else:
            fields = {"non_field_errors": exc.messages}
        exc = exceptions.ValidationError(fields)
    elif isinstance(exc, DataError):
        # A value the database cannot hold (an id past bigint, a NUL byte) is the client's error.
        logger.info("DataError turned into a 400: %s", exc)
        exc = exceptions.ValidationError({"non_field_errors": ["A value is out of range or malformed."]})
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "Not found.")
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        errors: dict[str, list[str]] = {}
        _flatten(exc.detail, "", errors)
        messages = [f"{k}: {v[0]}" if k != "non_field_errors" else v[0] for k, v in errors.items()]
        message = "Invalid input: " + messages[0] if len(messages) == 1 else f"Invalid input ({len(errors)} errors)."
        response.data = error_body(message, errors)
    else:
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        if isinstance(detail, (list, dict)):
            errors = {}
            _flatten(detail, "", errors)
            response.data = error_body("Request failed.", errors)
        else:
            response.data = error_body(str(detail))
    return response


@csrf_exempt  # it changes nothing; without this an unknown DELETE would get Django's HTML CSRF page
def not_found(request, *args, **kwargs):
    """Unknown paths under /api/v1/ answer JSON, like the rest of the API."""
    return JsonResponse(error_body(f"No API endpoint at {request.path}."), status=404)


class SizeLimitedJSONParser(JSONParser):
    """DRF reads a JSON body straight from the socket without Django's size check; this restores
    it, so a client cannot make the web process hold a body of any size in memory. It also turns
    the parser's RecursionError on deeply nested arrays into a 400."""

    def parse(self, stream, media_type=None, parser_context=None):
        request = (parser_context or {}).get("request")
        if request is not None:
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if length > body_limit():
                raise PayloadTooLarge(f"The request body is over the limit of {body_limit():,} bytes.")
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - nested too deeply.") from None


class SizeLimitedMultiPartParser(MultiPartParser):
    """Django spools an uploaded file to disk whatever its size; a body whose declared length is
    over the import limit is refused before a byte of it is read, so it cannot fill the disk."""

    def parse(self, stream, media_type=None, parser_context=None):
        request = (parser_context or {}).get("request")
        if request is not None:
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if length > MAX_IMPORT_FILE_BYTES:
                raise PayloadTooLarge(f"The request body is over the limit of {MAX_IMPORT_FILE_BYTES:,} bytes.")
        return super().parse(stream, media_type, parser_context)


class JSONLinesParser(BaseParser):
    """A raw JSON Lines body (`curl --data-binary @pairs.jsonl`). The body is spooled to a
    temporary file, not parsed: the import reads it line by line with the same checks as a file."""

    media_type = "application/jsonl"
    CHUNK = 1 << 20

    def parse(self, stream, media_type=None, parser_context=None):
        spool = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)
        total = 0
        if stream is not None:
            while chunk := stream.read(self.CHUNK):
                total += len(chunk)
                if total > MAX_IMPORT_FILE_BYTES:
                    raise PayloadTooLarge(f"The request body is over the limit of {MAX_IMPORT_FILE_BYTES:,} bytes.")
                spool.write(chunk)
        spool.seek(0)
        return {"jsonl": spool}


class NDJSONParser(JSONLinesParser):
    media_type = "application/x-ndjson"
