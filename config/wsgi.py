from __future__ import annotations

import gc
import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

application = get_wsgi_application()

# Import every view module now rather than on the first request, then move everything loaded so
# far out of the garbage collector's reach: those objects live as long as the process, and a full
# collection that walks them (about 20 ms here) would otherwise land in the middle of a request now
# and then, which is what a p99 latency shows (bench/queue_bench.py).
get_resolver().url_patterns  # noqa: B018 - evaluated for its import side effect
gc.collect()
gc.freeze()
