"""A model server's memory: the budget placement may fill, and the process's resident set (to measure a load).

``memory_budget``: ``MAAS_MODEL_SERVER_MEMORY_BYTES``, or by default half the machine's physical
memory shared among the ``inference_servers_per_host`` servers on it (the other half is the API's,
the workers' and the page cache's). ``resident_bytes``: this process's resident set now; a load's
memory is the difference before and after it (session, weights, warm-up buffers), which other
loads running at the same moment blur, so the placer never counts a version as smaller than its file.
"""

from __future__ import annotations

import psutil

from core.settings import Settings

DEFAULT_SHARE = 0.5


def memory_budget(settings: Settings) -> int:
    if settings.model_server_memory_bytes:
        return settings.model_server_memory_bytes
    return int(psutil.virtual_memory().total * DEFAULT_SHARE) // settings.inference_servers_per_host


def resident_bytes() -> int:
    return int(psutil.Process().memory_info().rss)
