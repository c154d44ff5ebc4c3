"""Live state: what changed since the model version was built, kept where every replica can see it.

Two kinds of state, each with one small interface and one module per backend:
- user history (`history`): the events of each user, read by every batch as context;
- catalog changes: items upserted or deleted since the base catalog, applied to the live catalog
  (`recserve.server.catalog`).

`memory` keeps both in this process, durable through an append-only log (`log`); `redis_backend` keeps them
in Redis, shared by every replica. The write path (validate, log, apply, acknowledge) is `writes`.
"""

from __future__ import annotations

from recserve.server.settings import StateSettings
from recserve.server.state.memory import MemoryBackend
from recserve.server.state.redis_backend import RedisBackend
from recserve.server.state.validation import WriteLimits


def backend_from_settings(settings: StateSettings) -> MemoryBackend | RedisBackend:
    """The backend the settings name, not opened yet."""
    if settings.backend == "redis":
        return RedisBackend(
            settings.redis_url,
            settings.redis_key_prefix,
            settings.redis_timeout_seconds,
            settings.max_history_events,
            max_context=settings.max_history_events,
        )
    return MemoryBackend(
        settings.state_dir,
        settings.fsync,
        settings.max_history_events,
        max_context=settings.max_history_events,
        compact_log_bytes=settings.compact_log_bytes,
    )


def write_limits(settings: StateSettings) -> WriteLimits:
    """How much one write call may carry."""
    return WriteLimits(settings.max_events_per_call, settings.max_items_per_call, settings.max_tags_per_item)
