"""Interaction data and its time-ordered split into the examples the towers and the ranker learn from.

The data comes from `demo_data.generate_demo` or `movielens.read_movielens`. Indices follow
docs/model-repository.md: row `r` of a vocabulary is model index `r + 1`; index 0 is "unknown" (users,
items) or "padding" (context items, tags).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interactions:
    """Implicit-feedback events, sorted by time; `user_rows`/`item_rows` index `user_ids`/`item_ids`.

    `item_tags[r]` are the tags (content features) of item row `r`, each one of `tag_ids`; an item may
    have none.
    """

    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    user_rows: np.ndarray  # int32 [N]
    item_rows: np.ndarray  # int32 [N]
    timestamps: np.ndarray  # int64 [N], seconds
    source: str
    tag_ids: tuple[str, ...]
    item_tags: tuple[tuple[str, ...], ...]

    def __len__(self) -> int:
        return int(self.user_rows.size)

    @property
    def num_users(self) -> int:
        """Size of the user vocabulary."""
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        """Size of the item vocabulary."""
        return len(self.item_ids)

    @property
    def num_tags(self) -> int:
        """Size of the tag vocabulary."""
        return len(self.tag_ids)

    def item_popularity(self) -> np.ndarray:
        """Interactions per item row, int64 [num_items]."""
        return np.bincount(self.item_rows, minlength=self.num_items).astype(np.int64)

    def item_tag_indices(self) -> np.ndarray:
        """int32 [num_items, T]: row `r` holds item row `r`'s 1-based tag indices, 0-padded; T >= 1."""
        return tag_indices(self.item_tags, self.tag_ids)


def tag_indices(item_tags: tuple[tuple[str, ...], ...], tag_ids: tuple[str, ...]) -> np.ndarray:
    """int32 [len(item_tags), T] of 1-based indices into `tag_ids`, 0-padded on the right; T >= 1.

    Raises:
        KeyError: a tag is not in `tag_ids`.
    """
    index_of = {tag: row + 1 for row, tag in enumerate(tag_ids)}
    width = max((len(tags) for tags in item_tags), default=0)
    matrix = np.zeros((len(item_tags), max(1, width)), dtype=np.int32)
    for row, tags in enumerate(item_tags):
        matrix[row, : len(tags)] = [index_of[tag] for tag in tags]
    return matrix


def first_occurrences(
    users: np.ndarray, items: np.ndarray, timestamps: np.ndarray, num_items: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep each (user, item) pair's earliest event; return events sorted by (time, user)."""
    order = np.lexsort((timestamps, items, users))
    users, items, timestamps = users[order], items[order], timestamps[order]
    pair = users.astype(np.int64) * num_items + items
    keep = np.ones(pair.size, dtype=bool)
    keep[1:] = pair[1:] != pair[:-1]
    users, items, timestamps = users[keep], items[keep], timestamps[keep]
    by_time = np.lexsort((users, timestamps))
    return users[by_time], items[by_time], timestamps[by_time]


@dataclass(frozen=True)
class Examples:
    """(user, recent items, next item) triples in model indices: what the towers and the ranker learn from."""

    user_indices: np.ndarray  # int32 [N], 1-based
    contexts: np.ndarray  # int32 [N, L], the items before the target, most recent last, 0 pads on the left
    targets: np.ndarray  # int32 [N], 1-based item index

    def __len__(self) -> int:
        return int(self.targets.size)

    def take(self, rows: np.ndarray) -> Examples:
        """The examples at `rows`."""
        return Examples(self.user_indices[rows], self.contexts[rows], self.targets[rows])


@dataclass(frozen=True)
class Split:
    """Per user: the last interaction for testing, the ones before it for the ranker, the rest for the towers.

    Users with too few interactions to hold any out are all in `train`. The ranker examples are held out
    from tower training, so they also validate it (early stopping).
    """

    train: Examples
    ranker: Examples
    test: Examples
    item_popularity: np.ndarray  # int64 [num_items]: training (non-test) interactions per item row


def split_by_time(interactions: Interactions, context_length: int, ranker_holdout_per_user: int = 1) -> Split:
    """Split each user's time-ordered history; contexts hold the `context_length` items before each target."""
    order = np.lexsort((interactions.timestamps, interactions.user_rows))
    users = interactions.user_rows[order]
    items = interactions.item_rows[order].astype(np.int32) + 1
    counts = np.bincount(users, minlength=interactions.num_users)
    position = np.arange(users.size) - (np.cumsum(counts) - counts)[users]
    from_end = counts[users] - 1 - position
    held_out = counts[users] >= ranker_holdout_per_user + 2
    test = held_out & (from_end == 0)
    ranker = held_out & (from_end >= 1) & (from_end <= ranker_holdout_per_user)
    train = ~(test | ranker)
    popularity = np.bincount(items[~test] - 1, minlength=interactions.num_items).astype(np.int64)

    def examples(selected: np.ndarray) -> Examples:
        rows = np.flatnonzero(selected)
        contexts = contexts_before(items, rows, position[rows], context_length)
        return Examples((users[rows] + 1).astype(np.int32), contexts, items[rows])

    return Split(examples(train), examples(ranker), examples(test), popularity)


def contexts_before(items: np.ndarray, ends: np.ndarray, own_counts: np.ndarray, length: int) -> np.ndarray:
    """int32 [len(ends), length]: the items just before each position `ends` of a (user, time)-sorted array.

    Only the last `own_counts` of them belong to the same user; the rest, and positions before the
    array's start, are 0 (padding, on the left). `ends` may be `len(items)` (after the last item).
    """
    padded = np.concatenate([np.zeros(length, dtype=np.int32), items.astype(np.int32)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, length)[ends]
    own = np.arange(length)[None, :] >= (length - np.asarray(own_counts))[:, None]
    return np.where(own, windows, 0).astype(np.int32)
