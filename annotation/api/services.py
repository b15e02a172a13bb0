"""Writes for the API's own rows: creating and revoking tokens."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from annotation.api.models import PREFIX_LENGTH, ApiToken, key_digest, new_key

# last_used_at is a hint for people reviewing their tokens, not an audit log: writing it at most
# once a minute keeps a busy script from turning every read into a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    key: str  # the only time the key exists outside the client: it is never stored


@transaction.atomic
def api_token_create(*, user, name: str, created_by=None) -> IssuedToken:
    key = new_key()
    token = ApiToken(user=user, name=name.strip(), prefix=key[:PREFIX_LENGTH], digest=key_digest(key))
    token.created_by = created_by
    token.full_clean()
    token.save()
    return IssuedToken(token=token, key=key)


@transaction.atomic
def api_token_revoke(*, token: ApiToken) -> ApiToken:
    # Conditional, so revoking twice keeps the first revocation time.
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    token.refresh_from_db(fields=["revoked_at"])
    return token


def api_token_touch(*, token: ApiToken) -> None:
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
