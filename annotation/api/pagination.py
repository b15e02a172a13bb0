from __future__ import annotations

from rest_framework.pagination import CursorPagination


class IdCursorPagination(CursorPagination):
    """Newest first, by id. A cursor stays correct while rows are added, and costs an index seek
    at any depth, where an offset would scan every row it skips."""

    ordering = "-id"
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000
