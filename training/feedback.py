"""Recorded feedback mapped onto a version's training data: the next version's vocabularies and interactions.

- Items: the version's items less the deleted ones, with their tags as last upserted, then the items the
  live catalog added (sorted by id). Tags new to the vocabulary are added after the version's (sorted).
- Users: the version's users, then the new users that have an interaction (sorted by id).
- Events: a positive event (`EventType.is_positive`) on a live item is an interaction of that (user, item)
  pair, at the time of its first positive event, weighted by its strongest type (`EVENT_WEIGHTS`); a pair
  the version already had keeps its time and takes the stronger weight. A pair whose latest event is a
  DISLIKE is no interaction at all, the version's own one included, as the server keeps it out of that
  user's recommendations. Events on items that are neither in the version nor upserted (or deleted) are
  left out and counted.

Pairs are unique, so merging the same recorded events again adds nothing: retraining can repeat.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from recserve.server.state.events import EventType, UserEvent
from recserve.training.data import Examples, Interactions
from recserve.training.recorded import Catalog, RecordedState
from recserve.training.training_data import StoredTraining

EVENT_WEIGHTS = {
    EventType.VIEW: 1,
    EventType.CLICK: 1,
    EventType.ADD_TO_CART: 2,
    EventType.PURCHASE: 3,
    EventType.LIKE: 3,
}
"""How many times a pair's tower training example counts, by its strongest positive event."""

PairFeedback = dict[tuple[str, str], tuple[int, int] | None]
"""(user id, item id) -> (time in seconds, weight) of its interaction; None when the latest is a DISLIKE."""


@dataclass(frozen=True)
class FeedbackSummary:
    """What the recorded state changed, for the version's metadata and the command's output."""

    recorded_events: int
    unknown_item_events: int  # events on items neither in the version nor in the live catalog
    new_interactions: int  # pairs the version did not have
    strengthened_interactions: int  # pairs it had, now weighing more
    removed_interactions: int  # pairs it had, whose latest event is a DISLIKE
    new_users: int
    new_items: int
    deleted_items: int
    retagged_items: int


@dataclass(frozen=True)
class MergedTraining:
    """The next version's interactions (time-ordered), their weights and which ones are new."""

    interactions: Interactions
    weights: np.ndarray  # uint8 [N]
    is_new: np.ndarray  # bool [N]: from recorded events, a pair the version did not have
    summary: FeedbackSummary


@dataclass(frozen=True)
class _Items:
    """The next item vocabulary and where each of the version's items went (-1: deleted)."""

    ids: tuple[str, ...]
    tags: tuple[tuple[str, ...], ...]
    new_row_of_old: np.ndarray  # int64 [old items]
    added: int
    deleted: int
    retagged: int


@dataclass(frozen=True)
class _Pairs:
    """Interactions as pair keys (user row * items + item row), with their times, weights and origin."""

    keys: np.ndarray  # int64
    times: np.ndarray  # int64, seconds
    weights: np.ndarray  # int64
    new: np.ndarray  # bool

    def take(self, rows: np.ndarray) -> _Pairs:
        return _Pairs(self.keys[rows], self.times[rows], self.weights[rows], self.new[rows])


def merge_feedback(base: StoredTraining, recorded: RecordedState) -> MergedTraining:
    """The version's interactions with the recorded events and catalog changes applied (module docstring)."""
    old = base.interactions
    items = _next_items(old, recorded.catalog)
    row_of_item = {item_id: row for row, item_id in enumerate(items.ids)}
    feedback = {
        pair: value for pair, value in pair_feedback(recorded.events).items() if pair[1] in row_of_item
    }
    added_users = sorted({user for (user, _), value in feedback.items() if value} - set(old.user_ids))
    user_ids = old.user_ids + tuple(added_users)
    row_of_user = {user_id: row for row, user_id in enumerate(user_ids)}
    width = len(items.ids)

    def key(pair: tuple[str, str]) -> int:
        return row_of_user[pair[0]] * width + row_of_item[pair[1]] if pair[0] in row_of_user else -1

    base_items = items.new_row_of_old[old.item_rows]
    kept = base_items >= 0
    version_pairs = _Pairs(
        old.user_rows[kept].astype(np.int64) * width + base_items[kept],
        old.timestamps[kept].astype(np.int64),
        base.weights[kept].astype(np.int64),
        np.zeros(int(kept.sum()), dtype=bool),
    )
    removed = np.array([key(pair) for pair, value in feedback.items() if value is None], dtype=np.int64)
    positives = [(key(pair), *value) for pair, value in feedback.items() if value is not None]
    keys, times, weights = (np.array(column, dtype=np.int64) for column in _columns(positives))
    recorded_pairs = _Pairs(keys, times, weights, np.ones(keys.size, dtype=bool))
    pairs, strengthened, removed_count = _combined(version_pairs, recorded_pairs, removed)
    interactions = Interactions(
        user_ids=user_ids,
        item_ids=items.ids,
        user_rows=(pairs.keys // width).astype(np.int32),
        item_rows=(pairs.keys % width).astype(np.int32),
        timestamps=pairs.times,
        source=old.source,
        tag_ids=_tag_vocabulary(old.tag_ids, items.tags),
        item_tags=items.tags,
    )
    summary = FeedbackSummary(
        recorded_events=len(recorded.events),
        unknown_item_events=sum(1 for event in recorded.events if event.item_id not in row_of_item),
        new_interactions=int(pairs.new.sum()),
        strengthened_interactions=strengthened,
        removed_interactions=removed_count,
        new_users=len(added_users),
        new_items=items.added,
        deleted_items=items.deleted,
        retagged_items=items.retagged,
    )
    return MergedTraining(interactions, pairs.weights.astype(np.uint8), pairs.new, summary)


def _combined(version: _Pairs, recorded: _Pairs, removed: np.ndarray) -> tuple[_Pairs, int, int]:
    """The version's pairs less the removed ones, stronger where recorded, plus the recorded new ones.

    Returns them in time order (ties: the version's first, then arrival order), with how many of the
    version's pairs were strengthened and removed.
    """
    position, in_version = _find(version.keys, recorded.keys)
    current = version.weights[position] if version.keys.size else np.zeros(position.size, dtype=np.int64)
    stronger = in_version & (recorded.weights > current)
    weights = version.weights.copy()
    weights[position[stronger]] = recorded.weights[stronger]
    keep = ~np.isin(version.keys, removed)
    added = recorded.take(np.flatnonzero(~in_version))
    pairs = _Pairs(
        np.concatenate([version.keys[keep], added.keys]),
        np.concatenate([version.times[keep], added.times]),
        np.concatenate([weights[keep], added.weights]),
        np.concatenate([np.zeros(int(keep.sum()), dtype=bool), np.ones(len(added.keys), dtype=bool)]),
    )
    return pairs.take(np.argsort(pairs.times, kind="stable")), int(stronger.sum()), int((~keep).sum())


def _find(keys: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of `wanted`, a position in `keys` (unique) and whether it holds that key."""
    if keys.size == 0:
        return np.zeros(wanted.size, dtype=np.int64), np.zeros(wanted.size, dtype=bool)
    order = np.argsort(keys, kind="stable")
    position = order[np.searchsorted(keys, wanted, sorter=order).clip(0, keys.size - 1)]
    return position, keys[position] == wanted


def pair_feedback(events: Iterable[UserEvent]) -> PairFeedback:
    """Each (user, item) pair's interaction, from its events in time order (ties: arrival order)."""
    feedback: PairFeedback = {}
    for event in sorted(events, key=lambda event: event.time_ms):
        pair = (event.user_id, event.item_id)
        if not event.type.is_positive:
            feedback[pair] = None
            continue
        weight = EVENT_WEIGHTS[event.type]
        current = feedback.get(pair)
        feedback[pair] = (
            (event.time_ms // 1000, weight) if current is None else (current[0], max(current[1], weight))
        )
    return feedback


def _columns(rows: list[tuple[int, int, int]]) -> tuple[list[int], list[int], list[int]]:
    if not rows:
        return [], [], []
    keys, times, weights = zip(*rows, strict=True)
    return list(keys), list(times), list(weights)


def _next_items(old: Interactions, catalog: Catalog) -> _Items:
    """The version's live items (tags as last upserted), then the added ones sorted by id."""
    deleted = {item_id for item_id, tags in catalog.items() if tags is None}
    kept = [row for row, item_id in enumerate(old.item_ids) if item_id not in deleted]
    kept_ids = [old.item_ids[row] for row in kept]
    kept_tags = [
        catalog[old.item_ids[row]] if old.item_ids[row] in catalog else old.item_tags[row] for row in kept
    ]
    known = set(old.item_ids)
    added = sorted(item_id for item_id, tags in catalog.items() if tags is not None and item_id not in known)
    new_row_of_old = np.full(old.num_items, -1, dtype=np.int64)
    new_row_of_old[kept] = np.arange(len(kept))
    retagged = sum(1 for row, tags in zip(kept, kept_tags, strict=True) if tags != old.item_tags[row])
    return _Items(
        ids=tuple(kept_ids) + tuple(added),
        tags=tuple(kept_tags) + tuple(catalog[item_id] or () for item_id in added),
        new_row_of_old=new_row_of_old,
        added=len(added),
        deleted=old.num_items - len(kept),
        retagged=retagged,
    )


def _tag_vocabulary(tag_ids: tuple[str, ...], item_tags: Iterable[tuple[str, ...]]) -> tuple[str, ...]:
    """The version's tags, then the ones only upserted items carry (sorted)."""
    known = set(tag_ids)
    return tag_ids + tuple(sorted({tag for tags in item_tags for tag in tags if tag not in known}))


def weighted_examples(examples: Examples, interactions: Interactions, weights: np.ndarray) -> Examples:
    """`examples` with each one repeated as often as its (user, target) interaction weighs."""
    width = interactions.num_items
    keys = interactions.user_rows.astype(np.int64) * width + interactions.item_rows
    wanted = (examples.user_indices.astype(np.int64) - 1) * width + (examples.targets - 1)
    position, _ = _find(keys, wanted)
    return examples.take(np.repeat(np.arange(len(examples)), weights[position].astype(np.int64)))


def new_cases(cases: Examples, interactions: Interactions, is_new: np.ndarray) -> Examples:
    """The cases whose (user, target) interaction is a new one (from recorded events)."""
    width = interactions.num_items
    new_keys = interactions.user_rows[is_new].astype(np.int64) * width + interactions.item_rows[is_new]
    wanted = (cases.user_indices.astype(np.int64) - 1) * width + (cases.targets - 1)
    return cases.take(np.flatnonzero(np.isin(wanted, new_keys)))
