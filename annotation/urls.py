from __future__ import annotations

from django.urls import path

from annotation import views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("p/<slug:slug>/", views.label, name="label"),
    path("p/<slug:slug>/next", views.label_next, name="label-next"),
    path("p/<slug:slug>/submit", views.label_submit, name="label-submit"),
    path("p/<slug:slug>/skip", views.label_skip, name="label-skip"),
]
