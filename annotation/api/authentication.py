"""`Authorization: Token <key>` for scripts, beside Django sessions (with CSRF) for the pages."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed

from annotation.api.models import ApiToken, key_digest
from annotation.api.services import api_token_touch

MAX_KEY_LENGTH = 200


class ApiTokenAuthentication(BaseAuthentication):
    keyword = b"token"

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None
        if len(parts) != 2:
            raise AuthenticationFailed("Invalid Authorization header: expected 'Token <key>'.")
        try:
            key = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise AuthenticationFailed("Invalid token: a key is ASCII.") from None
        if len(key) > MAX_KEY_LENGTH:
            raise AuthenticationFailed("Invalid token.")
        token = ApiToken.objects.select_related("user").filter(digest=key_digest(key), revoked_at__isnull=True).first()
        # One message for an unknown, revoked or disabled key: which one it was is nobody's business.
        if token is None or not token.user.is_active:
            raise AuthenticationFailed("Invalid or revoked token.")
        api_token_touch(token=token)
        return token.user, token

    def authenticate_header(self, request) -> str:
        # Makes an anonymous request a 401 with WWW-Authenticate instead of a 403.
        return "Token"


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "annotation.api.authentication.ApiTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Token <key>`; an admin creates keys in the admin site or with POST /api/v1/tokens/.",
        }
