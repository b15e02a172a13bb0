from __future__ import annotations

from django import template

from annotation.models import Membership, Role

register = template.Library()


@register.filter
def can_use_console(user) -> bool:
    """Whether the top bar links the console: staff, or an admin of some project (one query, only
    for a logged-in user who is not staff)."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return False
    return user.is_staff or Membership.objects.filter(user=user, role=Role.ADMIN).exists()


@register.filter
def percent(value, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value * 100:.{int(digits)}f}%"


@register.filter
def number(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    return f"{value:.{int(digits)}g}" if isinstance(value, float) else str(value)


@register.filter
def get_metric(metrics, name: str):
    value = (metrics or {}).get(name) if isinstance(metrics, dict) else None
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None
