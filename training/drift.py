"""Drifted feedback on the demo data: tastes that moved to trending themes, as the events a server records.

The demo data (`demo_data.generate_demo`) gives each item a topic and a Zipf popularity, drawn first from
the config's seed; `demo_item_structure` draws the same two again. Drift picks a few trending themes, each
one of the demo's topics (`mixed_topics` 1: the users' preferred topics shift) or a share of the items of
several (items the base data never had together: new associations), publishes new items in them (with
their topic's most common tags, as an upsert would carry them), deletes some items, and gives a sample of
the users, and some new ones, sessions of events on the trending themes only: items they never had, the
new ones among them. A version trained before the drift has never seen these tastes; what it can use is
the context of the latest events.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from recserve.server.state.events import EventType, ItemDelete, ItemUpsert, UserEvent
from recserve.training.cold_start import held_out_count
from recserve.training.config import DemoConfig
from recserve.training.data import Interactions

POSITIVE_TYPES = (EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE, EventType.LIKE)
POSITIVE_P = (0.55, 0.25, 0.1, 0.05, 0.05)
MIN_EVENTS = 4  # so that a drifted user has a held-out event and events before it
DAY_S = 86_400


@dataclass(frozen=True)
class DriftSettings:
    """How much drifts: who, how many events, which new items and deletions."""

    users: int = 2000  # known users whose tastes move
    new_users: int = 200
    events_per_user: float = 12.0
    trending_share: float = 0.1  # trending themes, as a share of the demo's topics
    mixed_topics: int = 1  # topics a theme draws its items from (a 1/mixed_topics share of each)
    themes_per_user: int = 2
    new_items: int = 200
    new_item_share: float = 0.2  # of the events on a theme with new items, the share on them
    deleted_items: int = 100
    session_length: float = 6.0
    dislike_share: float = 0.05  # per user, a DISLIKE of one of their earlier items
    seed: int = 11


@dataclass(frozen=True)
class DriftedFeedback:
    """What to write to a server: catalog changes first, then the events (each user's in time order)."""

    upserts: tuple[ItemUpsert, ...]
    deletes: tuple[ItemDelete, ...]
    events: tuple[UserEvent, ...]


def demo_item_structure(config: DemoConfig) -> tuple[np.ndarray, np.ndarray]:
    """Each vocabulary item's topic and popularity weight, as `generate_demo` drew them for `config`.

    The demo generates `cold_start_holdout` more items than `num_items`, the held-out ones last; the
    vocabulary is the first `num_items`.
    """
    generated = config.num_items + held_out_count(config.num_items, config.cold_start_holdout)
    rng = np.random.default_rng(config.seed)
    num_topics = max(2, generated // config.items_per_topic)
    weight = (rng.permutation(generated) + 1.0) ** -config.popularity_exponent
    topic = rng.permutation(np.arange(generated) % num_topics)
    return topic[: config.num_items], weight[: config.num_items]


def drifted_feedback(base: Interactions, config: DemoConfig, drift: DriftSettings) -> DriftedFeedback:
    """Feedback drifted away from `base` (a demo version's interactions, built with `config`)."""
    rng = np.random.default_rng(drift.seed)
    topic, weight = demo_item_structure(config)
    num_topics = int(topic.max()) + 1
    themes = _themes(rng, topic, max(1, round(drift.trending_share * num_topics)), drift.mixed_topics)
    new_theme = rng.integers(len(themes), size=drift.new_items)
    upserts = _new_items(rng, [themes[n] for n in new_theme], topic, base.item_tags)
    deleted = rng.choice(base.num_items, size=min(drift.deleted_items, base.num_items - 1), replace=False)
    live = np.ones(base.num_items, dtype=bool)
    live[deleted] = False
    pools = _Pools(themes, weight * live, base.item_ids, new_theme, drift.new_item_share)
    users = [base.user_ids[row] for row in rng.choice(base.num_users, size=drift.users, replace=False)]
    users += [f"drift-user-{n}" for n in range(1, drift.new_users + 1)]
    seen = _items_by_user(base)
    start_s = int(base.timestamps.max(initial=0)) + DAY_S
    events: list[UserEvent] = []
    for user_id in users:
        tastes = rng.choice(len(themes), size=min(drift.themes_per_user, len(themes)), replace=False)
        events += _user_events(rng, user_id, tastes, pools, seen.get(user_id, ()), start_s, drift)
    deletes = tuple(ItemDelete(base.item_ids[row]) for row in deleted)
    return DriftedFeedback(tuple(upserts), deletes, tuple(events))


def _themes(rng: np.random.Generator, topic: np.ndarray, count: int, mixed_topics: int) -> list[np.ndarray]:
    """`count` themes (item rows), each a random 1/mixed_topics of the items of `mixed_topics` topics."""
    num_topics = int(topic.max()) + 1
    wanted = count * mixed_topics
    sources = rng.choice(num_topics, size=wanted, replace=wanted > num_topics).reshape(count, mixed_topics)
    themes = []
    for chosen in sources:
        parts = []
        for value in chosen:
            rows = rng.permutation(np.flatnonzero(topic == value))
            parts.append(rows[: max(1, round(rows.size / mixed_topics))])
        themes.append(np.sort(np.concatenate(parts)))
    return themes


class _Pools:
    """Per theme, the items an event may pick: its live base items by popularity, and its new items."""

    def __init__(
        self,
        themes: list[np.ndarray],
        weight: np.ndarray,
        item_ids: tuple[str, ...],
        new_theme: np.ndarray,
        new_item_share: float,
    ) -> None:
        """`weight` is 0 for a deleted item; new item `n` (`new-item-<n + 1>`) is of theme `new_theme[n]`."""
        self._share = new_item_share
        self._base: list[tuple[list[str], np.ndarray]] = []
        self._new: list[list[str]] = []
        for number, rows in enumerate(themes):
            rows = rows[weight[rows] > 0]
            self._base.append(([item_ids[row] for row in rows], weight[rows] / weight[rows].sum()))
            self._new.append([_new_item_id(n) for n in np.flatnonzero(new_theme == number)])

    def draw(self, rng: np.random.Generator, theme: int) -> str:
        """One item of `theme`: a new one (uniformly) at the new-item share, else a base one by popularity."""
        fresh = self._new[theme]
        if fresh and rng.random() < self._share:
            return fresh[int(rng.integers(len(fresh)))]
        ids, p = self._base[theme]
        return ids[int(rng.choice(len(ids), p=p))]


def _new_item_id(number: int) -> str:
    """The id of new item `number` (0-based)."""
    return f"new-item-{number + 1}"


def _new_items(
    rng: np.random.Generator,
    themes: list[np.ndarray],
    topic: np.ndarray,
    item_tags: tuple[tuple[str, ...], ...],
) -> list[ItemUpsert]:
    """A new item per theme given: 2-3 of the three most common tags of one of the theme's topics."""
    signatures: dict[int, list[str]] = {}
    upserts = []
    for number, rows in enumerate(themes):
        value = int(topic[rows[int(rng.integers(rows.size))]])
        if value not in signatures:
            counts = Counter(tag for row in np.flatnonzero(topic == value) for tag in item_tags[row])
            signatures[value] = [tag for tag, _ in counts.most_common(3)]
        signature = signatures[value]
        size = min(len(signature), int(rng.integers(2, 4)))
        upserts.append(ItemUpsert(_new_item_id(number), tuple(rng.permutation(signature)[:size].tolist())))
    return upserts


def _items_by_user(base: Interactions) -> dict[str, tuple[str, ...]]:
    """Each user's base items, oldest first."""
    order = np.lexsort((base.timestamps, base.user_rows))
    found: dict[str, list[str]] = {}
    for user_row, item_row in zip(base.user_rows[order], base.item_rows[order], strict=True):
        found.setdefault(base.user_ids[user_row], []).append(base.item_ids[item_row])
    return {user_id: tuple(items) for user_id, items in found.items()}


def _user_events(
    rng: np.random.Generator,
    user_id: str,
    tastes: np.ndarray,
    pools: _Pools,
    seen: tuple[str, ...],
    start_s: int,
    drift: DriftSettings,
) -> list[UserEvent]:
    """Sessions on the user's themes, on items they never had; perhaps a DISLIKE of an old one."""
    count = MIN_EVENTS + int(rng.geometric(1.0 / max(1.0, drift.events_per_user - MIN_EVENTS)))
    time_s = start_s + int(rng.integers(0, 7 * DAY_S))
    taken = set(seen)
    events = []
    session_theme = int(rng.choice(tastes))
    for _ in range(count):
        item_id = pools.draw(rng, session_theme)
        if item_id not in taken:
            taken.add(item_id)
            kind = POSITIVE_TYPES[int(rng.choice(len(POSITIVE_TYPES), p=POSITIVE_P))]
            events.append(UserEvent(user_id, item_id, kind, time_s * 1000))
        if rng.random() < 1.0 / drift.session_length:
            session_theme = int(rng.choice(tastes))
            time_s += int(rng.exponential(DAY_S)) + 1
        else:
            time_s += int(rng.exponential(180)) + 1
    if seen and events and rng.random() < drift.dislike_share:
        disliked = seen[int(rng.integers(len(seen)))]
        events.insert(1, UserEvent(user_id, disliked, EventType.DISLIKE, events[0].time_ms + 1))
    return events
