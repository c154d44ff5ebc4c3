"""Cold start: items held out of training entirely, and how well the model places them from their tags.

A held-out item is not in the version's vocabulary; at serving time it would be upserted and embedded by
the item tower from its tags alone (item index 0). The evaluation does exactly that with the exported
item tower, then asks whether users who did interact with a held-out item rank it among the held-out
items' top 10.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recserve.training.data import Examples, Interactions, contexts_before, tag_indices
from recserve.training.embed import gather_embeddings
from recserve.training.evaluate import recall_at_k, sample_cases

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


def evaluate_cold_start(
    version_dir: Path, cold: ColdStartItems, tag_ids: tuple[str, ...], sample: int, seed: int, k: int = 10
) -> dict[str, float | int]:
    """`cold_start_recall@k` through the exported towers, against `cold_start_random_recall@k`.

    Held-out items are embedded as an upsert would embed them: item index 0 and their tags. A case's user
    is embedded from its user index and the stored embeddings of its recent items; its held-out item is
    ranked by cosine among all held-out items. At most `sample` cases are drawn.
    """
    from recserve.server.runtime.tf_model import SignatureRunner  # the server's runtime: imported when used

    cases = sample_cases(cold.cases, sample, seed)
    item_tower = SignatureRunner(version_dir / "item_tower")
    user_tower = SignatureRunner(version_dir / "user_tower")
    tags = tag_indices(cold.item_tags, tag_ids)
    item_vectors = item_tower(item_index=np.zeros(len(cold), np.int32), item_tags=tags)["embedding"]
    item_embeddings = np.load(version_dir / "item_embeddings.npy")
    recent = gather_embeddings(item_embeddings, cases.contexts)
    user_vectors = user_tower(user_index=cases.user_indices, recent_item_embeddings=recent)["embedding"]
    scores = user_vectors @ item_vectors.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k] + 1
    return {
        f"cold_start_recall@{k}": round(recall_at_k(top, cases.targets, k), 4),
        f"cold_start_random_recall@{k}": round(min(1.0, k / len(cold)), 4),
        "cold_start_items": len(cold),
        "cold_start_cases": len(cases),
    }
