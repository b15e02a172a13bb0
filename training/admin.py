from __future__ import annotations

from django.contrib import admin

from training.models import ModelVersion, TrainingRun


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "project",
        "kind",
        "status",
        "progress_percent",
        "step",
        "total_steps",
        "duration",
        "created_at",
    ]
    list_filter = ["kind", "status", "project"]
    search_fields = ["id", "error", "data_hash"]
    readonly_fields = [
        "created_at",
        "started_at",
        "finished_at",
        "heartbeat_at",
        "data_snapshot",
        "data_hash",
        "data_watermark",
    ]
    raw_id_fields = ["parent_model", "created_by"]
    list_select_related = ["project"]
    date_hierarchy = "created_at"

    @admin.display(description="progress", ordering="progress")
    def progress_percent(self, obj):
        return f"{obj.progress:.0%}"

    @admin.display(description="duration")
    def duration(self, obj):
        if obj.started_at is None:
            return "-"
        end = obj.finished_at or obj.heartbeat_at or obj.started_at
        seconds = int((end - obj.started_at).total_seconds())
        return f"{seconds // 60}m {seconds % 60:02d}s"


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "kind", "version", "is_active", "base", "parent", "created_at", "promoted_at"]
    list_filter = ["kind", "is_active", "project"]
    search_fields = ["artifact_path", "base"]
    readonly_fields = ["created_at", "promoted_at"]
    raw_id_fields = ["parent", "run"]
    list_select_related = ["project", "parent"]
