from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from config.auth import login_view, throttle_login

urlpatterns = [
    # The admin's own login form is a second way to guess passwords: the same throttle guards it.
    path("admin/login/", throttle_login(admin.site.login)),
    path("admin/", admin.site.urls),
    path("accounts/login/", login_view, name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/v1/", include("annotation.api.urls")),
    path("console/", include("training.urls")),
    path("", include("annotation.urls")),
]
