"""Who may do what in a project, checked at the top of every project-scoped view.

A project the user does not belong to answers 404, as if it did not exist, so that slugs cannot
be probed; a member asking for an admin-only operation gets 403.
"""

from __future__ import annotations

from dataclasses import dataclass

from rest_framework.exceptions import NotFound, PermissionDenied

from annotation.models import Membership, Project, Role


@dataclass(frozen=True)
class ProjectAccess:
    project: Project
    is_admin: bool


def project_access(*, user, slug: str, admin: bool = False) -> ProjectAccess:
    if user.is_staff:
        project = Project.objects.filter(slug=slug).first()
        is_admin = True
    else:
        membership = Membership.objects.select_related("project").filter(project__slug=slug, user=user).first()
        project = membership.project if membership else None
        is_admin = membership is not None and membership.role == Role.ADMIN
    if project is None:
        raise NotFound(f"No project {slug!r} among yours.")
    if admin and not is_admin:
        raise PermissionDenied("Only the project's admins can do this.")
    return ProjectAccess(project=project, is_admin=is_admin)
