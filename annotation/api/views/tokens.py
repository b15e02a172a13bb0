"""API tokens and the caller's identity."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.api.models import ApiToken
from annotation.api.pagination import IdCursorPagination
from annotation.api.services import api_token_create, api_token_revoke
from annotation.api.views.base import IdField, validated_query
from annotation.models import Membership


class TokenOutput(serializers.ModelSerializer):
    user = serializers.CharField(source="user.username")
    is_active = serializers.BooleanField()

    class Meta:
        model = ApiToken
        fields = ["id", "name", "prefix", "user", "is_active", "created_at", "last_used_at", "revoked_at"]


class TokenListCreateApi(generics.ListAPIView):
    """Your API tokens (staff: everyone's, or one user's with ?user=). POST makes a new key,
    shown in the response once and never again; staff may make one for another user."""

    serializer_class = TokenOutput
    pagination_class = IdCursorPagination

    class FilterSerializer(serializers.Serializer):
        user = IdField(required=False, help_text="Staff only: the tokens of this user id.")

    class TokenCreateInput(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        user = IdField(required=False, help_text="Staff only: the user id to make the token for.")

    class CreatedSerializer(TokenOutput):
        key = serializers.CharField(help_text="The secret. Shown once: store it now.")

        class Meta(TokenOutput.Meta):
            fields = [*TokenOutput.Meta.fields, "key"]

    def get_queryset(self):
        qs = ApiToken.objects.select_related("user")
        if getattr(self, "swagger_fake_view", False):
            return qs.none()
        user_id = validated_query(self.FilterSerializer, self.request).get("user")
        if not self.request.user.is_staff:
            if user_id is not None and user_id != self.request.user.pk:
                raise PermissionDenied("Only staff can list other users' tokens.")
            return qs.filter(user=self.request.user)
        return qs.filter(user_id=user_id) if user_id is not None else qs

    @extend_schema(parameters=[FilterSerializer])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(request=TokenCreateInput, responses={201: CreatedSerializer})
    def post(self, request):
        data = self.TokenCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        owner = request.user
        user_id = data.validated_data.get("user")
        if user_id is not None and user_id != request.user.pk:
            if not request.user.is_staff:
                raise PermissionDenied("Only staff can make tokens for other users.")
            owner = get_user_model().objects.filter(pk=user_id, is_active=True).first()
            if owner is None:
                raise serializers.ValidationError({"user": ["No active user with this id."]})
        issued = api_token_create(user=owner, name=data.validated_data["name"], created_by=request.user)
        issued.token.key = issued.key
        return Response(self.CreatedSerializer(issued.token).data, status=status.HTTP_201_CREATED)


class TokenRevokeApi(APIView):
    """Revokes a token at once; requests that carry it get 401 from then on."""

    @extend_schema(request=None, responses={204: None})
    def delete(self, request, pk: int):
        tokens = ApiToken.objects.all() if request.user.is_staff else ApiToken.objects.filter(user=request.user)
        token = tokens.filter(pk=pk).first()
        if token is None:
            raise NotFound("No such token among yours.")
        api_token_revoke(token=token)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeApi(APIView):
    """Who the request is authenticated as, and the caller's projects with their role."""

    @extend_schema(
        responses=inline_serializer(
            "Me",
            {
                "id": serializers.IntegerField(),
                "username": serializers.CharField(),
                "is_staff": serializers.BooleanField(),
                "projects": inline_serializer(
                    "MeProject", {"slug": serializers.CharField(), "role": serializers.CharField()}, many=True
                ),
            },
        )
    )
    def get(self, request):
        memberships = Membership.objects.filter(user=request.user).select_related("project").order_by("project__slug")
        return Response(
            {
                "id": request.user.pk,
                "username": request.user.get_username(),
                "is_staff": request.user.is_staff,
                "projects": [{"slug": m.project.slug, "role": m.role} for m in memberships],
            }
        )
