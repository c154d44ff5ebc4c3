"""What the user tower reads and what a recommendation must leave out, from history and request together.

The context is the user's stored history (its positive items, most recent last) followed by the request's
recent items, each item once at its latest place, the newest `max_recent_items` kept. Recommend never
returns the request's excluded items, the items the history has seen (unless the request includes recent
items) nor the ones the user disliked. Resolved per batch, against the batch's catalog view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from recserve.server.catalog.view import CatalogView
from recserve.server.state.history import EMPTY_PROFILE, UserProfile

NO_ROWS = np.zeros(0, dtype=np.int32)


@dataclass(frozen=True)
class UserQuery:
    """Who to score for, as the request says: the user (index 0 = unknown) and the request's context rows."""

    user_id: str
    user_index: int
    context: np.ndarray = field(default_factory=lambda: NO_ROWS)
    use_history: bool = True


@dataclass(frozen=True)
class ResolvedUser:
    """A user as one batch sees them: their context rows (most recent last) and the rows to leave out."""

    user_index: int
    context: np.ndarray
    seen: np.ndarray
    disliked: np.ndarray

    @property
    def is_cold_start(self) -> bool:
        """Nothing personal to go on: an unknown user without any context item."""
        return self.user_index == 0 and self.context.size == 0


def resolve(user: UserQuery, profile: UserProfile, view: CatalogView, max_recent_items: int) -> ResolvedUser:
    """Combine the stored profile (EMPTY_PROFILE when the request ignores history) with the request."""
    if profile is EMPTY_PROFILE:
        return ResolvedUser(user.user_index, user.context[-max_recent_items:], NO_ROWS, NO_ROWS)
    history = _rows(view, profile.context[-max_recent_items:])
    combined = np.concatenate([history, user.context]) if user.context.size else history
    return ResolvedUser(
        user.user_index,
        _latest_once(combined)[-max_recent_items:],
        _rows(view, profile.seen),
        _rows(view, profile.disliked),
    )


def _rows(view: CatalogView, item_ids: Sequence[str] | frozenset[str]) -> np.ndarray:
    """The batch's rows of the items that are live in it (others are left out)."""
    if not item_ids:
        return NO_ROWS
    rows = np.fromiter((view.row_of(item_id) for item_id in item_ids), dtype=np.int32, count=len(item_ids))
    return rows[rows > 0]


def _latest_once(rows: np.ndarray) -> np.ndarray:
    """Each row once, where it last occurs, in order."""
    if rows.size < 2:
        return rows
    reversed_rows = rows[::-1]
    _, first_in_reverse = np.unique(reversed_rows, return_index=True)
    keep = np.sort(first_in_reverse)
    return reversed_rows[keep][::-1]
