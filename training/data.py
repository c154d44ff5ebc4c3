"""Interaction data: a synthetic demo generator, a MovieLens reader, and the time-ordered split.

Indices follow docs/model-repository.md: row `r` of a vocabulary is model index `r + 1`; index 0 is
"unknown" (users) or "padding" (items).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEMO_EPOCH_S = 1_700_000_000
MOVIELENS_FILES = (("ratings.csv", ",", 1), ("ratings.dat", "::", 0), ("u.data", "\t", 0))


@dataclass(frozen=True)
class Interactions:
    """Implicit-feedback events, sorted by time; `user_rows`/`item_rows` index `user_ids`/`item_ids`."""

    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    user_rows: np.ndarray  # int32 [N]
    item_rows: np.ndarray  # int32 [N]
    timestamps: np.ndarray  # int64 [N], seconds
    source: str

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

    def item_popularity(self) -> np.ndarray:
        """Interactions per item row, int64 [num_items]."""
        return np.bincount(self.item_rows, minlength=self.num_items).astype(np.int64)


def generate_demo(
    num_users: int = 10_000,
    num_items: int = 20_000,
    seed: int = 7,
    interactions_per_user: float = 28.0,
    items_per_topic: int = 100,
    session_length: float = 6.0,
    popularity_exponent: float = 0.8,
) -> Interactions:
    """Synthetic implicit feedback with the structure a session-aware recommender should find.

    Items belong to topics and have Zipf-distributed popularity. Each user likes a few topics; their
    history is a sequence of sessions, each about one topic, so the latest items predict the next one
    better than the whole history does. A user never interacts with the same item twice. Deterministic
    for a given seed.
    """
    rng = np.random.default_rng(seed)
    num_topics = max(2, num_items // items_per_topic)
    item_weight = (rng.permutation(num_items) + 1.0) ** -popularity_exponent
    item_topic = rng.permutation(np.arange(num_items) % num_topics)
    counts = 3 + rng.geometric(1.0 / max(1.0, interactions_per_user - 3.0), size=num_users)
    users = np.repeat(np.arange(num_users, dtype=np.int64), counts)
    position = np.arange(users.size) - np.repeat(np.cumsum(counts) - counts, counts)
    session_start = (position == 0) | (rng.random(users.size) < 1.0 / session_length)
    session_of_event = np.cumsum(session_start) - 1
    topics = _session_topics(rng, num_users, num_topics, users[session_start])[session_of_event]
    items = _sample_items(rng, item_topic, item_weight, topics)
    timestamps = _timestamps(rng, counts, session_start)
    return _interactions(users, items, timestamps, num_users, num_items, "demo")


def _session_topics(
    rng: np.random.Generator, num_users: int, num_topics: int, session_users: np.ndarray
) -> np.ndarray:
    """One topic per session: mostly one of the user's favourites, sometimes an exploration."""
    topic_weight = (rng.permutation(num_topics) + 1.0) ** -0.5
    topic_weight /= topic_weight.sum()
    favourites = rng.choice(num_topics, size=(num_users, 4), p=topic_weight)
    affinity = np.cumsum(rng.dirichlet(np.ones(4), size=num_users), axis=1)
    slot = (rng.random(session_users.size)[:, None] > affinity[session_users]).sum(axis=1).clip(0, 3)
    topics = favourites[session_users, slot]
    explore = rng.random(session_users.size) < 0.1
    topics[explore] = rng.choice(num_topics, size=int(explore.sum()), p=topic_weight)
    return topics


def _sample_items(
    rng: np.random.Generator, item_topic: np.ndarray, item_weight: np.ndarray, topics: np.ndarray
) -> np.ndarray:
    """An item per event from its topic by popularity, with a little topic-free popularity noise."""
    by_topic = np.argsort(item_topic, kind="stable")
    sorted_topic, sorted_weight = item_topic[by_topic], item_weight[by_topic]
    cumulative = np.cumsum(sorted_weight)
    topic_start = np.searchsorted(sorted_topic, sorted_topic, side="left")
    before = np.where(topic_start > 0, cumulative[topic_start - 1], 0.0)
    totals = np.bincount(sorted_topic, weights=sorted_weight)
    # Topic t occupies (t, t + 1] on one axis, so one searchsorted samples every event's topic at once.
    axis = sorted_topic + (cumulative - before) / totals[sorted_topic]
    picked = np.searchsorted(axis, topics + rng.random(topics.size), side="right").clip(0, axis.size - 1)
    items = by_topic[picked]
    noise = rng.random(topics.size) < 0.05
    global_axis = np.cumsum(item_weight) / item_weight.sum()
    items[noise] = np.searchsorted(global_axis, rng.random(int(noise.sum()))).clip(0, item_weight.size - 1)
    return items


def _timestamps(rng: np.random.Generator, counts: np.ndarray, session_start: np.ndarray) -> np.ndarray:
    """Seconds: minutes apart within a session, days apart between sessions, strictly increasing per user."""
    gaps = np.where(
        session_start,
        rng.exponential(2 * 86_400, session_start.size),
        rng.exponential(180, session_start.size),
    )
    gaps = gaps.astype(np.int64) + 1
    first = np.cumsum(counts) - counts
    gaps[first] = rng.integers(0, 60 * 86_400, counts.size)
    cumulative = np.cumsum(gaps)
    return DEMO_EPOCH_S + cumulative - np.repeat(cumulative[first] - gaps[first], counts)


def _interactions(
    users: np.ndarray, items: np.ndarray, timestamps: np.ndarray, num_users: int, num_items: int, source: str
) -> Interactions:
    """Demo ids (`user-1`.. so that `user-n` is user index n) and events sorted by time, repeats dropped."""
    users, items, timestamps = _first_occurrences(users, items, timestamps, num_items)
    return Interactions(
        user_ids=tuple(f"user-{n}" for n in range(1, num_users + 1)),
        item_ids=tuple(f"item-{n}" for n in range(1, num_items + 1)),
        user_rows=users.astype(np.int32),
        item_rows=items.astype(np.int32),
        timestamps=timestamps.astype(np.int64),
        source=source,
    )


def _first_occurrences(
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


def read_movielens(path: Path, min_rating: float | None = None) -> Interactions:
    """Read MovieLens ratings as implicit feedback.

    Args:
        path: `ratings.csv` (header `userId,movieId,rating,timestamp`), `ratings.dat` (`::`-separated) or
            `u.data` (tab-separated, no header), or a directory holding one of them.
        min_rating: keep only ratings at or above this; None keeps every rating as an interaction.

    Ids stay the strings of the file; numeric ids are ordered numerically. A repeated (user, item) pair
    keeps its earliest event.

    Raises:
        FileNotFoundError: no ratings file at `path`.
        ValueError: a line does not have four fields.
    """
    file, separator, header_lines = _ratings_file(Path(path))
    lines = [line for line in file.read_text().splitlines()[header_lines:] if line.strip()]
    fields = [line.split(separator) for line in lines]
    if any(len(row) < 4 for row in fields):
        raise ValueError(f"{file}: expected user, item, rating, timestamp on every line")
    table = np.array([row[:4] for row in fields], dtype=str).reshape(-1, 4)
    if min_rating is not None:
        table = table[table[:, 2].astype(np.float64) >= min_rating]
    user_ids, users = _vocabulary(table[:, 0])
    item_ids, items = _vocabulary(table[:, 1])
    timestamps = table[:, 3].astype(np.float64).astype(np.int64)
    users, items, timestamps = _first_occurrences(users, items, timestamps, len(item_ids))
    return Interactions(
        user_ids, item_ids, users.astype(np.int32), items.astype(np.int32), timestamps, f"movielens:{file}"
    )


def _ratings_file(path: Path) -> tuple[Path, str, int]:
    """The ratings file at or under `path`, its field separator and header line count."""
    for name, separator, header_lines in MOVIELENS_FILES:
        if path.is_dir() and (path / name).is_file():
            return path / name, separator, header_lines
        if path.is_file() and path.name == name:
            return path, separator, header_lines
    if path.is_file():
        separator = "," if path.suffix == ".csv" else "\t"
        return path, separator, int(separator == ",")
    names = ", ".join(name for name, _, _ in MOVIELENS_FILES)
    raise FileNotFoundError(f"no MovieLens ratings file ({names}) at {path}")


def _vocabulary(values: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """Distinct ids (numeric ones in numeric order) and each value's row in them."""
    distinct, rows = np.unique(values, return_inverse=True)
    if all(value.isdigit() for value in distinct):
        order = np.argsort(distinct.astype(np.int64), kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        distinct, rows = distinct[order], rank[rows]
    return tuple(str(value) for value in distinct), rows.astype(np.int64)


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

    Users with too few interactions to hold any out are all in `train`.
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
    contexts = _Contexts(items, position, context_length)
    popularity = np.bincount(items[~test] - 1, minlength=interactions.num_items).astype(np.int64)
    return Split(
        contexts.examples(users, train),
        contexts.examples(users, ranker),
        contexts.examples(users, test),
        popularity,
    )


class _Contexts:
    """Builds the context window of any event in a (user, time)-sorted event array."""

    def __init__(self, items: np.ndarray, position: np.ndarray, context_length: int) -> None:
        padded = np.concatenate([np.zeros(context_length, dtype=np.int32), items])
        self._windows = np.lib.stride_tricks.sliding_window_view(padded, context_length)
        self._items = items
        self._position = position
        self._length = context_length

    def examples(self, users: np.ndarray, selected: np.ndarray) -> Examples:
        """Examples for the events where `selected` is true, with only the same user's earlier items."""
        rows = np.flatnonzero(selected)
        windows = self._windows[rows]
        own = np.arange(self._length)[None, :] >= (self._length - self._position[rows])[:, None]
        contexts = np.where(own, windows, 0).astype(np.int32)
        return Examples((users[rows] + 1).astype(np.int32), contexts, self._items[rows])
