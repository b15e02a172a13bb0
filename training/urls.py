from __future__ import annotations

from django.urls import path

from training import views

P = "<slug:slug>/"

urlpatterns = [
    path("", views.index, name="console"),
    path(P, views.dashboard, name="console-dashboard"),
    path(P + "training/", views.training, name="console-training"),
    path(P + "training/runs/start", views.run_start, name="console-run-start"),
    path(P + "training/runs/<int:pk>/status", views.run_status, name="console-run-status"),
    path(P + "training/runs/<int:pk>/cancel", views.run_cancel, name="console-run-cancel"),
    path(P + "training/models/<int:pk>/promote", views.model_promote, name="console-model-promote"),
    path(P + "training/models/rollback", views.model_rollback, name="console-model-rollback"),
    path(P + "training/loop", views.loop_settings, name="console-loop"),
    path(P + "policies/", views.policies, name="console-policies"),
    path(P + "disagreements/", views.disagreements, name="console-disagreements"),
    path(P + "data/", views.data, name="console-data"),
]
