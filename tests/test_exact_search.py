"""Exact search of a small catalog (retrieval.exact_search_max_items) on the real model and a real server."""

from __future__ import annotations

import io
from pathlib import Path

import grpc
import numpy as np
import pytest
from rich.console import Console

from recserve.client import RecommenderClient
from recserve.client.formatting import show_model_info
from recserve.inference import grpc_service_pb2 as kpb
from recserve.inference import grpc_service_pb2_grpc as kpb_grpc
from recserve.server.catalog.from_model import live_catalog
from recserve.server.pipeline import BatchPipeline, RankedItems
from recserve.server.repository import load_model
from recserve.server.settings import LimitSettings, RetrievalSettings, ServerSettings, StateSettings
from tests.repositories import configured_like
from tests.serving import ServerThread
from tests.test_pipeline import queries

EVERY_NODE = 10**7  # Annoy inspects every node: the index answers exactly too, at many times the cost


def pipeline(model, exact_search_max_items: int) -> BatchPipeline:  # noqa: ANN001
    retrieval = RetrievalSettings(exact_search_max_items=exact_search_max_items, ann_threads=1)
    return BatchPipeline(model, live_catalog(model, exact_search_max_items), retrieval, LimitSettings())


def test_exact_search_answers_as_an_index_that_inspects_every_node(version_dir: Path) -> None:
    exact = pipeline(load_model(version_dir, search_k=2000), exact_search_max_items=1_000_000)
    reference = pipeline(load_model(version_dir, search_k=EVERY_NODE), exact_search_max_items=0)
    approximate = pipeline(load_model(version_dir, search_k=50), exact_search_max_items=0)
    assert exact.catalog.view().exact and not reference.catalog.view().exact
    batch = queries(40)
    got, want, coarse = exact.run_batch(batch), reference.run_batch(batch), approximate.run_batch(batch)
    recommended = [n for n, result in enumerate(want) if isinstance(result, RankedItems)]
    assert recommended
    for n in recommended:
        assert got[n].rows.tolist() == want[n].rows.tolist()
        np.testing.assert_allclose(got[n].scores, want[n].scores, atol=1e-5)
    assert any(coarse[n].rows.tolist() != want[n].rows.tolist() for n in recommended), "a cheap index differs"


@pytest.fixture(scope="module")
def exact_repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's model, configured to search its 2,500 items exactly."""
    target = tmp_path_factory.mktemp("exact")
    return configured_like(model_repository, target, "retrieval", {"exact_search_max_items": 10_000})


def test_a_server_searching_exactly_says_so_and_serves(
    server_settings: ServerSettings, exact_repository: Path, tmp_path: Path
) -> None:
    settings = server_settings.model_copy(
        update={"model_repository": exact_repository, "state": StateSettings(state_dir=tmp_path)}
    )
    with ServerThread(settings) as server, RecommenderClient(server.address, timeout_s=30) as client:
        info = client.model_info()
        assert info.index.exact_search and info.index.exact_search_max_items == 10_000
        assert info.index.library == "annoy", "the index is still built and loaded for larger catalogs"
        table = Console(file=io.StringIO(), width=200)
        show_model_info(table, info)
        assert "exact (catalogs up to 10,000 items)" in table.file.getvalue()
        recommended = client.recommend("user-3", k=10, recent_item_ids=["item-42"])
        assert len(recommended.items) == 10 and "item-42" not in {item.item_id for item in recommended.items}
        similar = client.similar_items("item-42", k=5)
        assert len(similar.items) == 5 and "item-42" not in {item.item_id for item in similar.items}
        with pytest.raises(grpc.RpcError) as refused:
            client.similar_items("no-such-item", k=5)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        with grpc.insecure_channel(server.address) as channel:
            config = kpb_grpc.GRPCInferenceServiceStub(channel).ModelConfig(
                kpb.ModelConfigRequest(name="recommender"), timeout=10
            )
        assert config.config.parameters["exact_search_max_items"].string_value == "10000"
