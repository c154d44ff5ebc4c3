"""Cold start: items held out of training entirely, with their interactions.

A held-out item is not in the version's vocabulary; at serving time it would be upserted with its tags.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recserve.training.data import Examples, Interactions, contexts_before

HOLDOUT_STREAM = 2  # the held-out items' random stream, beside the data's own


@dataclass(frozen=True)
class ColdStartItems:
    """Items held out of training, and the interactions with them as evaluation cases.

    `cases.targets` are 1-based rows of `item_ids`; `cases.contexts` hold the user's most recent
    training-vocabulary items before the interaction (model indices, 0 pads on the left).
    """

    item_ids: tuple[str, ...]
    item_tags: tuple[tuple[str, ...], ...]
    cases: Examples

    def __len__(self) -> int:
        return len(self.item_ids)


def held_out_count(kept_items: int, share: float) -> int:
    """How many items make `share` of a catalogue of them plus `kept_items` others."""
    return round(share * kept_items / (1.0 - share))


def random_items(num_items: int, share: float, seed: int) -> np.ndarray:
    """A random `share` of `num_items` item rows (sorted), at most all but one."""
    count = min(round(share * num_items), num_items - 1)
    rng = np.random.default_rng([seed, HOLDOUT_STREAM])
    return np.sort(rng.choice(num_items, size=max(0, count), replace=False))


def hold_out_items(
    interactions: Interactions, held_out_rows: np.ndarray, context_length: int
) -> tuple[Interactions, ColdStartItems | None]:
    """Remove the items at `held_out_rows`, and every interaction with them, from `interactions`.

    Returns the remaining data (items re-indexed in their order, users and tags as they were) and the
    held-out items with their interactions; None instead when no item is held out.
    """
    if held_out_rows.size == 0:
        return interactions, None
    is_cold = np.zeros(interactions.num_items, dtype=bool)
    is_cold[held_out_rows] = True
    new_row = np.cumsum(~is_cold) - 1  # an item's row among the kept items
    cold_row = np.cumsum(is_cold) - 1  # among the held-out items
    cold_event = is_cold[interactions.item_rows]
    kept = np.flatnonzero(~is_cold)
    warm = Interactions(
        interactions.user_ids,
        tuple(interactions.item_ids[row] for row in kept),
        interactions.user_rows[~cold_event],
        new_row[interactions.item_rows[~cold_event]].astype(np.int32),
        interactions.timestamps[~cold_event],
        interactions.source,
        interactions.tag_ids,
        tuple(interactions.item_tags[row] for row in kept),
    )
    cases = _cold_cases(
        warm,
        interactions.user_rows[cold_event],
        cold_row[interactions.item_rows[cold_event]],
        interactions.timestamps[cold_event],
        context_length,
    )
    held_out = np.flatnonzero(is_cold)
    return warm, ColdStartItems(
        tuple(interactions.item_ids[row] for row in held_out),
        tuple(interactions.item_tags[row] for row in held_out),
        cases,
    )


def _cold_cases(
    warm: Interactions, users: np.ndarray, cold_rows: np.ndarray, timestamps: np.ndarray, context_length: int
) -> Examples:
    """Per held-out event, the user's `context_length` latest kept items strictly before it."""
    order = np.lexsort((warm.timestamps, warm.user_rows))
    warm_users, warm_times = warm.user_rows[order].astype(np.int64), warm.timestamps[order]
    span = int(max(warm_times.max(initial=0), timestamps.max(initial=0))) + 1  # timestamps are >= 0
    # One sorted key (user, time) finds every event's place among the user's kept events at once.
    users = users.astype(np.int64)
    ends = np.searchsorted(warm_users * span + warm_times, users * span + timestamps)
    own = ends - np.searchsorted(warm_users, users)
    contexts = contexts_before(warm.item_rows[order] + 1, ends, own, context_length)
    return Examples((users + 1).astype(np.int32), contexts, (cold_rows + 1).astype(np.int32))
