"""The synthetic demo data: users with session-shaped tastes over topics of tagged, Zipf-popular items."""

from __future__ import annotations

import numpy as np

from recserve.training.data import Interactions, first_occurrences

DEMO_EPOCH_S = 1_700_000_000
TAG_STREAM = 1  # the tags' random stream, beside the interactions' own
SIGNATURE_TAGS = 3  # most tags in a topic's signature (each has 2 or 3)
MAX_ITEM_TAGS = 4
ITEM_TAG_COUNT_P = (0.25, 0.35, 0.25, 0.15)  # P(an item has 1, 2, 3, 4 tags)


def generate_demo(
    num_users: int = 10_000,
    num_items: int = 20_000,
    seed: int = 7,
    interactions_per_user: float = 28.0,
    items_per_topic: int = 100,
    session_length: float = 6.0,
    popularity_exponent: float = 0.8,
    num_tags: int = 100,
    tag_noise: float = 0.1,
) -> Interactions:
    """Synthetic implicit feedback with the structure a session-aware recommender should find.

    Items belong to topics and have Zipf-distributed popularity. Each user likes a few topics; their
    history is a sequence of sessions, each about one topic, so the latest items predict the next one
    better than the whole history does. A user never interacts with the same item twice. Every item
    has 1-4 of `num_tags` tags, drawn mostly from its topic's signature of 2-3 tags (`tag_noise` of them
    at random instead), so tags tell an item's topic approximately, not exactly. Deterministic for a
    given seed; the tags come from a random stream of their own, so they leave the interactions as
    they were without tags.
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
    users, items, timestamps = first_occurrences(users, items, timestamps, num_items)
    tag_ids = tuple(f"tag-{n}" for n in range(1, num_tags + 1))
    return Interactions(
        user_ids=tuple(f"user-{n}" for n in range(1, num_users + 1)),  # so that `user-n` is user index n
        item_ids=tuple(f"item-{n}" for n in range(1, num_items + 1)),
        user_rows=users.astype(np.int32),
        item_rows=items.astype(np.int32),
        timestamps=timestamps.astype(np.int64),
        source="demo",
        tag_ids=tag_ids,
        item_tags=_item_tags(np.random.default_rng([seed, TAG_STREAM]), item_topic, tag_ids, tag_noise),
    )


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


def _item_tags(
    rng: np.random.Generator, item_topic: np.ndarray, tag_ids: tuple[str, ...], tag_noise: float
) -> tuple[tuple[str, ...], ...]:
    """Per item, 1-4 distinct tags: its topic's signature in random order, then random tags.

    Each signature tag is replaced by a random one with probability `tag_noise`.
    """
    num_items, num_tags = item_topic.size, len(tag_ids)
    num_topics = int(item_topic.max()) + 1
    signatures = np.argsort(rng.random((num_topics, num_tags)), axis=1)[:, :SIGNATURE_TAGS]
    size = rng.integers(2, SIGNATURE_TAGS + 1, size=num_topics)[item_topic, None]
    slot = np.arange(MAX_ITEM_TAGS)[None, :]
    # Random keys, plus 1 past the signature's size: its tags come first, shuffled.
    keys = rng.random((num_items, SIGNATURE_TAGS)) + (slot[:, :SIGNATURE_TAGS] >= size)
    shuffled = np.take_along_axis(signatures[item_topic], np.argsort(keys, axis=1), axis=1)
    shuffled = np.pad(shuffled, ((0, 0), (0, MAX_ITEM_TAGS - SIGNATURE_TAGS)))
    from_signature = (slot < size) & (rng.random((num_items, MAX_ITEM_TAGS)) >= tag_noise)
    random_tags = rng.integers(0, num_tags, size=(num_items, MAX_ITEM_TAGS))
    candidates = np.where(from_signature, shuffled, random_tags)
    counts = rng.choice(np.arange(1, MAX_ITEM_TAGS + 1), size=num_items, p=ITEM_TAG_COUNT_P)
    return tuple(
        tuple(tag_ids[tag] for tag in dict.fromkeys(row[:count].tolist()))
        for row, count in zip(candidates, counts, strict=True)
    )
