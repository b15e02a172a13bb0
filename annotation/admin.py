from __future__ import annotations

from django.contrib import admin
from django.db.models import Count
from django.utils import timezone

from annotation import services
from annotation.models import Assignment, Comparison, Membership, Preference, Project, Prompt, Response


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "slug",
        "overlap",
        "retrain_threshold",
        "auto_training",
        "n_comparisons",
        "n_preferences",
        "created_at",
    ]
    list_filter = ["auto_training", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    readonly_fields = ["created_at"]
    inlines = [MembershipInline]

    def delete_model(self, request, obj):
        services.project_delete(project=obj)

    def delete_queryset(self, request, queryset):
        for project in queryset:
            services.project_delete(project=project)

    def get_queryset(self, request):
        # Two counts in the list query instead of two queries per row.
        return (
            super()
            .get_queryset(request)
            .annotate(
                _comparisons=Count("comparisons", distinct=True), _preferences=Count("preferences", distinct=True)
            )
        )

    @admin.display(description="comparisons", ordering="_comparisons")
    def n_comparisons(self, obj):
        return obj._comparisons

    @admin.display(description="preferences", ordering="_preferences")
    def n_preferences(self, obj):
        return obj._preferences


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "project", "role", "created_at"]
    list_filter = ["role", "project"]
    search_fields = ["user__username", "project__name"]
    autocomplete_fields = ["user", "project"]


@admin.register(Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ["id", "short_text", "project", "is_chat", "is_eval", "n_responses", "created_at"]
    list_filter = ["project", "is_eval", "created_at"]
    search_fields = ["text", "content_hash"]
    readonly_fields = ["content_hash", "created_at"]
    list_select_related = ["project"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_responses=Count("responses"))

    @admin.display(description="prompt")
    def short_text(self, obj):
        return obj.display_text[:100]

    @admin.display(boolean=True, description="chat")
    def is_chat(self, obj):
        return obj.is_chat

    @admin.display(description="responses", ordering="_responses")
    def n_responses(self, obj):
        return obj._responses


@admin.register(Response)
class ResponseAdmin(admin.ModelAdmin):
    list_display = ["id", "short_text", "source", "policy_version", "prompt_id", "created_at"]
    list_filter = ["source", "prompt__project"]
    search_fields = ["text", "source"]
    readonly_fields = ["content_hash", "created_at"]
    raw_id_fields = ["prompt", "policy_version"]
    list_select_related = ["policy_version"]

    @admin.display(description="text")
    def short_text(self, obj):
        return obj.text[:100]


@admin.register(Comparison)
class ComparisonAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "project",
        "prompt_id",
        "response_a_id",
        "response_b_id",
        "label_count",
        "is_gold",
        "gold_choice",
        "created_at",
    ]
    list_filter = ["project", "is_gold", "label_count"]
    search_fields = ["prompt__text", "id"]
    raw_id_fields = ["prompt", "response_a", "response_b"]
    readonly_fields = ["label_count", "created_at"]
    list_select_related = ["project"]


@admin.register(Preference)
class PreferenceAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "comparison_id",
        "annotator",
        "choice",
        "strength",
        "shown_left",
        "time_spent_s",
        "created_at",
    ]
    list_filter = ["project", "choice", "strength", "shown_left", "created_at"]
    search_fields = ["annotator__username", "rationale", "comparison__id"]
    raw_id_fields = ["comparison", "annotator"]
    readonly_fields = ["created_at"]
    list_select_related = ["annotator"]
    date_hierarchy = "created_at"

    @admin.display(description="time spent (s)", ordering="time_spent_ms")
    def time_spent_s(self, obj):
        return None if obj.time_spent_ms is None else round(obj.time_spent_ms / 1000, 1)


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ["id", "comparison_id", "annotator", "status", "is_live", "shown_left", "leased_at", "expires_at"]
    list_filter = ["project", "status"]
    search_fields = ["annotator__username", "comparison__id", "skip_reason"]
    raw_id_fields = ["comparison", "annotator"]
    list_select_related = ["annotator"]

    @admin.display(boolean=True, description="live lease")
    def is_live(self, obj):
        return obj.status == "leased" and obj.expires_at > timezone.now()
