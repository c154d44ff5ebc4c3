"""Shared fixtures: ONE tiny real model per test session, and a real server serving it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from recserve.server.settings import ServerSettings, StateSettings  # noqa: E402
from recserve.v1 import recommender_pb2_grpc  # noqa: E402
from tests.serving import ServerThread  # noqa: E402
from tests.tokens import Tokens  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME = "recommender"

# Small enough to build in well under a minute on 2 cores, big enough that retrieval is a real search.
TINY_DEMO = {
    "num_users": 1500,
    "num_items": 2500,
    "embedding_dim": 32,
    "max_epochs": 2,
    "eval_users": 500,
    "ann_queries": 200,
}


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with the committed config.yaml and one tiny built version."""
    from recserve.training.build import build_demo
    from recserve.training.config import load_demo_config

    repository = tmp_path_factory.mktemp("models")
    model_dir = repository / MODEL_NAME
    model_dir.mkdir()
    shutil.copy(REPO_ROOT / "models" / MODEL_NAME / "config.yaml", model_dir / "config.yaml")
    config = load_demo_config(model_dir / "config.yaml").model_copy(update=TINY_DEMO)
    build_demo(repository, MODEL_NAME, config, show_progress=False)
    return repository


@pytest.fixture(scope="session")
def version_dir(model_repository: Path) -> Path:
    """The built version directory."""
    return model_repository / MODEL_NAME / "1"


@pytest.fixture(scope="session")
def server_settings(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> ServerSettings:
    """Settings for a test server on a free loopback port, serving the tiny model."""
    return ServerSettings(
        model_repository=model_repository,
        grpc_host="127.0.0.1",
        grpc_port=0,
        metrics_port=0,
        warmup_rounds=1,
        state=StateSettings(state_dir=tmp_path_factory.mktemp("state")),
    )


@pytest.fixture(scope="session")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Tokens:
    """A tokens file with one token per role, for servers whose write services are on."""
    return Tokens.create(tmp_path_factory.mktemp("auth"))


@pytest.fixture(scope="session")
def server(server_settings: ServerSettings) -> Iterator[ServerThread]:
    """A real server, SERVING, shared by the whole session."""
    with ServerThread(server_settings) as running:
        yield running


@pytest.fixture(scope="session")
def server_address(server: ServerThread) -> str:
    """HOST:PORT of the shared server."""
    return server.address


@pytest.fixture
def channel(server_address: str) -> Iterator[grpc.Channel]:
    """A fresh insecure channel to the shared server."""
    with grpc.insecure_channel(server_address) as chan:
        yield chan


@pytest.fixture
def stub(channel: grpc.Channel) -> recommender_pb2_grpc.RecommenderStub:
    """A generated Recommender stub on the shared server."""
    return recommender_pb2_grpc.RecommenderStub(channel)
