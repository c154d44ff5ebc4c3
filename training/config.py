"""Settings for `build_demo`, read from the `demo:` section of a model's `config.yaml`.

The `retrieval:` section (`search_k`, `candidate_count`) is read too, so the offline evaluation measures the
index at the settings the server will use.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

RETRIEVAL_KEYS = ("search_k", "candidate_count")


class DemoConfig(BaseModel):
    """Everything that determines a demo build: data, model sizes, training and evaluation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Data.
    seed: int = Field(7, description="Seeds the data generator, TensorFlow, Keras and Annoy.")
    num_users: int = Field(10_000, ge=2, description="Users generated.")
    num_items: int = Field(20_000, ge=10, description="Items generated.")
    interactions_per_user: float = Field(
        28.0, gt=3, description="Mean interactions drawn per user, before removing repeats."
    )
    items_per_topic: int = Field(100, ge=2, description="Items per taste cluster; fewer means more topics.")
    session_length: float = Field(6.0, ge=1, description="Mean interactions in one single-topic session.")
    popularity_exponent: float = Field(0.8, gt=0, description="Zipf exponent of item popularity.")
    num_tags: int = Field(100, ge=3, description="Demo tags (`tag-1`..); each topic has a signature of 2-3.")
    tag_noise: float = Field(
        0.1, ge=0, le=1, description="Share of a demo item's signature tags drawn at random instead."
    )
    movielens_min_rating: float | None = Field(
        None, description="With a MovieLens file: ratings below this are not interactions; None keeps all."
    )
    cold_start_holdout: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="Share of items held out of training entirely, to evaluate cold start; 0 turns it off.",
    )
    # Model.
    embedding_dim: int = Field(32, ge=2, description="Size of user and item embeddings.")
    context_length: int = Field(20, ge=1, description="Recent items the user tower sees when training.")
    hidden_units: int = Field(128, ge=1, description="Width of the user tower's hidden layer.")
    # Two-tower training.
    max_epochs: int = Field(20, ge=1, description="Most passes over the tower training examples.")
    patience: int = Field(
        2, ge=1, description="Tower epochs without a better validation recall before training stops."
    )
    max_examples_per_epoch: int = Field(
        1_000_000,
        ge=1,
        description="Tower examples per epoch: a larger training set gives each epoch a fresh random "
        "sample of this many, so an epoch's cost (and a large catalog's build time) stays bounded.",
    )
    validation_cases: int = Field(
        2000, ge=1, description="Held-out (ranker) examples sampled to validate the towers after each epoch."
    )
    batch_size: int = Field(
        1024,
        ge=2,
        description="Examples per step (fewer for small data); the batch's other items are negatives.",
    )
    learning_rate: float = Field(0.005, gt=0, description="Adam learning rate for the towers.")
    temperature: float = Field(0.2, gt=0, description="Softmax temperature over cosine similarities.")
    user_dropout: float = Field(
        0.5, ge=0, le=1, description="Share of examples trained as an unknown user, so context alone works."
    )
    context_dropout: float = Field(
        0.2, ge=0, le=1, description="Share of examples trained without recent items, so a user alone works."
    )
    id_dropout: float = Field(
        0.25,
        ge=0,
        lt=1,
        description="Share of target, context and ranked items shown as item index 0 with their tags, so "
        "that tags alone place an item the model never saw.",
    )
    # Ranker training.
    ranker_holdout_per_user: int = Field(
        1, ge=1, description="Interactions before each user's last kept out of tower training for the ranker."
    )
    ranker_max_epochs: int = Field(20, ge=1, description="Most passes over the ranker examples.")
    ranker_max_examples: int = Field(
        200_000,
        ge=1,
        description="Held-out positives the ranker trains on (a random sample of them when there are more).",
    )
    ranker_patience: int = Field(
        2, ge=1, description="Ranker epochs without a lower validation loss before training stops."
    )
    ranker_validation_share: float = Field(
        0.1, gt=0, lt=1, description="Share of the ranker examples kept aside for its validation loss."
    )
    ranker_negatives: int = Field(8, ge=1, description="Negatives sampled per ranker positive.")
    ranker_learning_rate: float = Field(0.002, gt=0, description="Adam learning rate for the ranker.")
    # Index and evaluation.
    n_trees: int = Field(32, ge=1, description="Annoy trees; more trees, better recall and a bigger file.")
    search_k: int = Field(3000, ge=-1, description="Annoy nodes inspected per query; -1 = Annoy's default.")
    candidate_count: int = Field(100, ge=1, description="ANN candidates ranked per recommendation.")
    eval_users: int = Field(2000, ge=1, description="Users sampled for the offline evaluation.")
    ann_queries: int = Field(500, ge=1, description="Queries measuring ANN recall against exact search.")
    threads: int = Field(0, ge=0, description="TensorFlow intra-op threads for training; 0 = one per core.")


def load_demo_config(config_yaml: Path) -> DemoConfig:
    """Read a model's `config.yaml`: its `demo:` section plus `retrieval.search_k`/`candidate_count`.

    Other sections are ignored. A missing file or section gives the defaults; a key in `demo:` overrides
    the same key from `retrieval:`.

    Raises:
        pydantic.ValidationError: a `demo:` key is unknown or a value is out of range.
    """
    if not config_yaml.exists():
        return DemoConfig()
    document = yaml.safe_load(config_yaml.read_text()) or {}
    retrieval = document.get("retrieval") or {}
    values = {key: retrieval[key] for key in RETRIEVAL_KEYS if key in retrieval}
    values.update(document.get("demo") or {})
    return DemoConfig(**values)
