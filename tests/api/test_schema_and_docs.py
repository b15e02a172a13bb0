"""The OpenAPI document and the docs page that renders it, from vendored files only."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def test_the_schema_is_openapi_3_and_documents_token_auth_and_the_error_shape(world):
    response = APIClient().get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert schema["components"]["securitySchemes"]["tokenAuth"]["name"] == "Authorization"
    assert set(schema["components"]["schemas"]["Error"]["required"]) == {"message", "errors"}
    export = schema["paths"]["/api/v1/projects/{slug}/export/"]["get"]
    assert {"application/jsonl", "text/csv", "application/vnd.apache.parquet"} <= set(
        export["responses"]["200"]["content"]
    )
    params = {p["name"] for p in export["parameters"]}
    assert {
        "format",
        "mode",
        "include_ties",
        "since",
        "until",
        "annotator",
        "min_agreement",
        "policy_version",
    } <= params


def test_the_docs_page_loads_swagger_ui_from_our_own_static_files(world):
    client = Client()
    page = client.get("/api/v1/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    external = [a for a in assets if a.startswith(("http:", "https:", "//"))]
    assert not external, f"the docs page loads from elsewhere: {external}"
    for asset in assets:
        if asset.startswith("/static/"):
            served = client.get(asset)
            assert served.status_code == 200, asset
            body = b"".join(served.streaming_content) if served.streaming else served.content
            assert body and b"sourceMappingURL" not in body
