"""Admins create and revoke users' API tokens here. The key is generated on save and shown once,
in the confirmation message; only its digest is stored."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.utils import timezone

from annotation.api.models import ApiToken
from annotation.api.services import api_token_create


class ApiTokenAddForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ["user", "name"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix", "name", "user", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at", "created_at"]
    search_fields = ["name", "prefix", "user__username"]
    autocomplete_fields = ["user"]
    readonly_fields = ["prefix", "created_by", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = ApiTokenAddForm
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["user", "name"]
        return ["user", "name", *self.readonly_fields]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["user", *self.readonly_fields]

    def save_model(self, request, obj, form, change):
        if change:
            obj.save(update_fields=["name"])
            return
        issued = api_token_create(user=obj.user, name=obj.name, created_by=request.user)
        # The admin goes on with `obj` (its redirect and message), so it becomes the saved row.
        obj.pk, obj.prefix, obj.created_at = issued.token.pk, issued.token.prefix, issued.token.created_at
        obj._state.adding = False
        self.message_user(
            request,
            f"Token for {obj.user}: {issued.key} — copy it now; it is not stored and will not be shown again.",
            messages.WARNING,
        )

    def has_delete_permission(self, request, obj=None):
        # Revoking keeps the row (who had access, until when); deleting would erase that.
        return False

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request, queryset):
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} token(s).")
