"""The OpenAPI document's additions, and the docs page served from vendored Swagger UI."""

from __future__ import annotations

from django.templatetags.static import static
from drf_spectacular.views import SpectacularSwaggerSplitView

ERROR_SCHEMA = {
    "type": "object",
    "required": ["message", "errors"],
    "properties": {
        "message": {"type": "string"},
        "errors": {
            "type": "object",
            "description": "Field (or record path, e.g. `records[3]`) to its messages; empty when none applies.",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
        },
    },
}

ERROR_RESPONSES = {
    "400": "Invalid input: `errors` names each bad field.",
    "401": "No credentials, or invalid ones.",
    "403": "Authenticated, but not allowed (e.g. an annotator asking for an admin operation).",
    "404": "No such object among those you can see.",
    "406": "The Accept header asks for a type this endpoint does not produce.",
    "409": "Conflicts with the current state.",
    "413": "The request body is too large.",
    "415": "Unsupported Content-Type.",
    "429": "Too many requests.",
}


def add_error_responses(result, generator, request, public):
    """Every operation can fail with the same JSON error shape; saying so once here keeps the
    document honest without a decorator on every view."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for methods in result.get("paths", {}).values():
        for operation in methods.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for code, description in ERROR_RESPONSES.items():
                operation["responses"].setdefault(code, {"description": description, "content": ref})
    return result


class SwaggerDocsView(SpectacularSwaggerSplitView):
    """Swagger UI from static/vendor/swagger-ui (swagger-ui-dist from npm): the docs work with no
    internet access and load nothing from a CDN. The split view serves its start-up script from
    `?script=` instead of inline, so the page runs under the site's CSP (script-src 'self')."""

    @staticmethod
    def _swagger_ui_resource(filename):
        return static(f"vendor/swagger-ui/{filename}")

    @staticmethod
    def _swagger_ui_favicon():
        return static("vendor/swagger-ui/favicon-32x32.png")
