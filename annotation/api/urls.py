from __future__ import annotations

from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView

from annotation.api.errors import not_found
from annotation.api.schema import SwaggerDocsView
from annotation.api.views import data, export, preferences, projects, queue, tokens, training

P = "projects/<slug:slug>/"

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SwaggerDocsView.as_view(url_name="api-schema"), name="api-docs"),
    path("me/", tokens.MeApi.as_view(), name="api-me"),
    path("tokens/", tokens.TokenListCreateApi.as_view(), name="api-tokens"),
    path("tokens/<int:pk>/", tokens.TokenRevokeApi.as_view(), name="api-token-revoke"),
    path("projects/", projects.ProjectListCreateApi.as_view(), name="api-projects"),
    path(P, projects.ProjectDetailApi.as_view(), name="api-project"),
    path(P + "members/", projects.MemberListSetApi.as_view(), name="api-members"),
    path(P + "members/<int:user_id>/", projects.MemberRemoveApi.as_view(), name="api-member-remove"),
    path(P + "import/", data.ProjectImportApi.as_view(), name="api-import"),
    path(P + "prompts/", data.PromptListApi.as_view(), name="api-prompts"),
    path(P + "prompts/<int:pk>/", data.PromptDetailApi.as_view(), name="api-prompt"),
    path(P + "prompts/<int:pk>/comparisons/", data.PromptComparisonsCreateApi.as_view(), name="api-prompt-pair"),
    path(P + "comparisons/", data.ComparisonListApi.as_view(), name="api-comparisons"),
    path(P + "comparisons/<int:pk>/", data.ComparisonDetailApi.as_view(), name="api-comparison"),
    path(P + "queue/next/", queue.QueueNextApi.as_view(), name="api-queue-next"),
    path(P + "queue/submit/", queue.QueueSubmitApi.as_view(), name="api-queue-submit"),
    path(P + "queue/skip/", queue.QueueSkipApi.as_view(), name="api-queue-skip"),
    path(P + "assignments/", queue.AssignmentListApi.as_view(), name="api-assignments"),
    path(P + "preferences/", preferences.PreferenceListApi.as_view(), name="api-preferences"),
    path(P + "preferences/<int:pk>/", preferences.PreferenceDetailApi.as_view(), name="api-preference"),
    path(P + "export/", export.ExportApi.as_view(), name="api-export"),
    path(P + "training-runs/", training.TrainingRunListCreateApi.as_view(), name="api-training-runs"),
    path(P + "training-runs/<int:pk>/", training.TrainingRunDetailApi.as_view(), name="api-training-run"),
    path(P + "training-runs/<int:pk>/cancel/", training.TrainingRunCancelApi.as_view(), name="api-training-cancel"),
    path(P + "model-versions/", training.ModelVersionListApi.as_view(), name="api-model-versions"),
    path(P + "model-versions/<int:pk>/promote/", training.ModelVersionPromoteApi.as_view(), name="api-model-promote"),
    path(P + "model-versions/rollback/", training.ModelVersionRollbackApi.as_view(), name="api-model-rollback"),
    # Last: anything else under /api/v1/ is a JSON 404, not Django's HTML page.
    re_path(r"^.*$", not_found, name="api-not-found"),
]
