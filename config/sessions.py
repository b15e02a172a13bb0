"""The session store: Django's database store, with its one look-up per request prepared.

Every page and labelling request starts by loading the session row. Django builds that query with
the ORM each time, which on the labelling endpoints cost about as much as the queue's own work, so
it is written out here as a prepared statement (config.prepared). Everything else, including the
format and the signing of the stored data, is Django's: the class keeps the name SessionStore,
which is part of the signing salt, so sessions stored before this store was configured stay valid.
"""

from __future__ import annotations

from django.contrib.sessions.backends import db
from django.db import connections, router
from django.utils import timezone

from config import prepared

_LOAD = "SELECT session_data FROM django_session WHERE session_key = %s AND expire_date > %s"


class SessionStore(db.SessionStore):
    def _get_session_from_db(self):
        model = self.model
        alias = router.db_for_read(model)
        key = self.session_key
        with connections[alias].cursor() as cursor:
            now = connections[alias].ops.adapt_datetimefield_value(timezone.now())
            prepared.execute(cursor, "rlhf_session_load", _LOAD, [key, now], using=alias)
            row = cursor.fetchone()
        if row is None:
            self._session_key = None
            return None
        # load(), the only caller, reads session_data alone.
        return model(session_key=key, session_data=row[0])
