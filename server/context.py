"""What the user tower reads and what a recommendation must leave out, from history and request together.

The context is the user's stored history (its positive items, most recent last) followed by the request's
recent items, each item once at its latest place, the newest `max_recent_items` kept. Recommend never
returns the request's excluded items, the items the history has seen (unless the request includes recent
items) nor the ones the user disliked. Resolved per batch, against the batch's catalog view; a history's
rows are cached per stored profile until the catalog changes, so a returning user costs a lookup.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from recserve.server.catalog.view import CatalogView
from recserve.server.state.history import EMPTY_PROFILE, UserProfile

NO_ROWS = np.zeros(0, dtype=np.int32)
CACHED_PROFILES = 20_000  # the users of the last few thousand batches


@dataclass(frozen=True)
class UserQuery:
    """Who to score for, as the request says: the user (index 0 = unknown) and the request's context rows."""

    user_id: str
    user_index: int
    context: np.ndarray = field(default_factory=lambda: NO_ROWS)
    use_history: bool = True


@dataclass(frozen=True)
class ResolvedUser:
    """A user as one batch sees them: context rows (most recent last), and rows to leave out (sorted)."""

    user_index: int
    context: np.ndarray
    disliked: np.ndarray = field(default_factory=lambda: NO_ROWS)
    seen_or_disliked: np.ndarray = field(default_factory=lambda: NO_ROWS)

    @property
    def is_cold_start(self) -> bool:
        """Nothing personal to go on: an unknown user without any context item."""
        return self.user_index == 0 and self.context.size == 0


@dataclass(frozen=True)
class _HistoryRows:
    """One stored profile's items as the rows of one catalog version."""

    profile: UserProfile  # held so that its id is not reused while cached
    catalog_version: int
    context: np.ndarray
    disliked: np.ndarray
    seen_or_disliked: np.ndarray


class ContextResolver:
    """Resolves users against catalog views, caching each stored profile's rows (safe on any thread)."""

    def __init__(self, max_recent_items: int) -> None:
        self._max_recent_items = max_recent_items
        self._cache: dict[int, _HistoryRows] = {}
        self._lock = threading.Lock()

    def resolve(self, user: UserQuery, profile: UserProfile, view: CatalogView) -> ResolvedUser:
        """The profile (EMPTY_PROFILE when the request ignores history) combined with the request."""
        limit = self._max_recent_items
        if profile is EMPTY_PROFILE:
            return ResolvedUser(user.user_index, user.context[-limit:])
        history = self._history_rows(profile, view)
        context = history.context
        if user.context.size:
            context = _latest_once(np.concatenate([history.context, user.context]))[-limit:]
        return ResolvedUser(user.user_index, context, history.disliked, history.seen_or_disliked)

    def _history_rows(self, profile: UserProfile, view: CatalogView) -> _HistoryRows:
        cached = self._cache.get(id(profile))
        if cached is not None and cached.profile is profile and cached.catalog_version == view.version:
            return cached
        disliked = np.sort(_rows(view, profile.disliked))
        rows = _HistoryRows(
            profile,
            view.version,
            _rows(view, profile.context[-self._max_recent_items :]),
            disliked,
            np.sort(np.concatenate([_rows(view, profile.seen), disliked])),
        )
        with self._lock:
            if len(self._cache) >= CACHED_PROFILES:
                self._cache.clear()  # bounded; the next batches refill what is in use
            self._cache[id(profile)] = rows
        return rows


def _rows(view: CatalogView, item_ids: Sequence[str] | frozenset[str]) -> np.ndarray:
    """The batch's rows of the items that are live in it (others are left out)."""
    if not item_ids:
        return NO_ROWS
    rows = np.fromiter((view.row_of(item_id) for item_id in item_ids), dtype=np.int32, count=len(item_ids))
    return rows[rows > 0]


def _latest_once(rows: np.ndarray) -> np.ndarray:
    """Each row once, where it last occurs, in order."""
    reversed_rows = rows[::-1]
    _, first_in_reverse = np.unique(reversed_rows, return_index=True)
    return reversed_rows[np.sort(first_in_reverse)][::-1]
