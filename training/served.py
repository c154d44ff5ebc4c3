"""A model version as a server would serve it now: its catalog with the recorded catalog changes applied.

Comparing two versions goes through this, so that both are measured by the server's own pipeline on the
same cases, each with its own vocabulary: a case's user, context and target are mapped by id. An item
upserted after a version was built is in its live catalog, embedded by its item tower from its tags, as a
server would have it; a deleted item is not. Imported only by the retraining path: it loads the server's
runtime (TensorFlow, Annoy).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np

from recserve.server.catalog.from_model import live_catalog
from recserve.server.context import UserQuery
from recserve.server.pipeline import BatchPipeline, RecommendQuery
from recserve.server.repository import load_model
from recserve.server.settings import load_model_config
from recserve.server.state.events import ItemDelete, ItemUpsert
from recserve.training.evaluate import RecommendFn
from recserve.training.recorded import Catalog

QUERY_BATCH = 64


class ServedVersion:
    """One version with its live catalog; `recommender()` answers cases given in any vocabulary."""

    def __init__(self, version_dir: Path, catalog: Catalog) -> None:
        config = load_model_config(version_dir.parent)
        self.model = load_model(version_dir, config.retrieval.search_k)
        self.catalog = live_catalog(self.model, config.retrieval.exact_search_max_items)
        changes = [
            (ItemUpsert(item_id, tags) if tags is not None else ItemDelete(item_id), None)
            for item_id, tags in catalog.items()
        ]
        self.catalog.commit(self.catalog.prepare(changes))
        self._pipeline = BatchPipeline(self.model, self.catalog, config.retrieval, config.limits)

    def __enter__(self) -> ServedVersion:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the pipeline's lookup threads."""
        self._pipeline.close()

    def recommender(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> RecommendFn:
        """Recommend for cases whose index `i` means `user_ids[i - 1]` / `item_ids[i - 1]` (0: none).

        Users this version does not know are its unknown user (index 0), served from their context as
        the server serves them; context items it does not have are left out; recommended items come back
        in the cases' item indices (0 for an item the cases' vocabulary lacks). Context items are
        excluded from the answer, as the server excludes recent items.
        """
        user_index = np.array([0, *(self.model.users.index_of(user_id) for user_id in user_ids)], np.int32)
        row_of_index = np.array([0, *(self.catalog.row_of(item_id) for item_id in item_ids)], np.int32)
        view = self.catalog.view()
        index_of_row = np.zeros(view.size, dtype=np.int32)
        index_of_row[row_of_index] = np.arange(row_of_index.size, dtype=np.int32)
        index_of_row[0] = 0

        def recommend(user_indices: np.ndarray, contexts: np.ndarray, k: int) -> np.ndarray:
            out = np.zeros((len(user_indices), k), dtype=np.int32)
            for start in range(0, len(user_indices), QUERY_BATCH):
                queries = []
                for user, context in zip(
                    user_indices[start : start + QUERY_BATCH],
                    contexts[start : start + QUERY_BATCH],
                    strict=True,
                ):
                    rows = row_of_index[context[context > 0]]
                    rows = rows[rows > 0].astype(np.int32)
                    query = UserQuery("", int(user_index[user]), rows, use_history=False)
                    queries.append(RecommendQuery(query, k, np.unique(rows)))
                for row, result in enumerate(self._pipeline.run_batch(queries), start=start):
                    out[row, : result.rows.size] = index_of_row[result.rows]
            return out

        return recommend
