"""Retraining after a drift of tastes: does version 2 predict the drifted events better than version 1?

1. Builds version 1 of the demo model (`recserve build-demo`, the committed config's demo settings unless
   --num-users/--num-items say otherwise) in a fresh repository, or uses --repository's newest version.
2. Generates drifted feedback (training/drift.py): a few themes trend, new items are published in them,
   some items are deleted, and a sample of the users (and new ones) turn to the trending themes. One
   scenario per --mixed-topics: 1, each theme is one of the demo's topics (preferred topics shift); 3, each
   is a share of three topics' items (new associations, which the base data never had together).
3. Records it through a real `recserve serve` (Catalog and Events APIs, with a write token) into that
   server's state directory, then stops the server; or, with --via state, straight into the state
   directory through the memory backend.
4. Runs `recserve retrain` on the repository and state directory, and starts a server on the repository
   to check that it serves the new version.
5. Prints and saves (bench/results/retrain_drift.json) recall@10 / ndcg@10 of both versions on the held-out
   drifted events (each drifted user's latest), split by whether the target item is one version 1 had or
   one published since.

    flock /tmp/bench.lock .venv/bin/python bench/retrain_drift.py [--num-users N --num-items N] [--via state]
"""

from __future__ import annotations

# isort: off
from common import REPO_ROOT, machine_note, write_result  # first: sets thread limits before numpy loads

# isort: on
import os

# Before TensorFlow loads (bench/common.py sets it too), and inherited by the `recserve retrain` child, so the
# breakdown here and the child's evaluation.json run the same kernels: oneDNN's round differently, which
# would move a few near-tied rankings.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import argparse
import asyncio
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from server_load import start_server

from recserve.client import Event, RecommenderClient
from recserve.server.settings import StateSettings
from recserve.server.state.memory import MemoryBackend
from recserve.training.config import load_demo_config
from recserve.training.data import split_by_time
from recserve.training.drift import DriftedFeedback, DriftSettings, drifted_feedback
from recserve.training.evaluate import ndcg_at_k, recall_at_k, sample_cases
from recserve.training.feedback import merge_feedback, new_cases
from recserve.training.recorded import read_recorded_state
from recserve.training.training_data import load_training_data

MODEL = "recommender"
CHUNK = 1000  # the server's default max_events_per_call and max_items_per_call


def main() -> None:
    args = _arguments()
    workdir = Path(tempfile.mkdtemp(prefix="retrain-drift-"))
    try:
        base = _linked(args.repository, workdir / "base") if args.repository else _build_base(workdir, args)
        version_dir = _newest(base)
        scenarios = [_scenario(base, workdir / f"mixed-{mixed}", args, mixed) for mixed in args.mixed_topics]
        payload = {
            "machine": machine_note(),
            "command": " ".join(sys.argv),
            "via": args.via,
            "previous_version": version_dir.name,
            "training_data_bytes": (version_dir / "training_data.npz").stat().st_size,
            "base_interactions": len(load_training_data(version_dir).interactions),
            "scenarios": scenarios,
        }
        for scenario in scenarios:
            _print(payload, scenario)
        print(f"wrote {write_result('retrain_drift', payload)}")
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _scenario(base: Path, workdir: Path, args: argparse.Namespace, mixed_topics: int) -> dict[str, Any]:
    """One drift on a repository of its own (linked to the base version): record, retrain, evaluate."""
    repository = _linked(base, workdir)
    version_dir = _newest(repository)
    config = load_demo_config(repository / MODEL / "config.yaml")
    drift = DriftSettings(
        users=args.drift_users,
        new_users=args.new_users,
        events_per_user=args.events_per_user,
        mixed_topics=mixed_topics,
        new_items=args.new_items,
        deleted_items=args.deleted_items,
        seed=args.seed,
    )
    feedback = drifted_feedback(load_training_data(version_dir).interactions, config, drift)
    state_dir = workdir / "state"
    started = time.perf_counter()
    if args.via == "serve":
        _record_through_server(repository, state_dir, feedback, workdir)
    else:
        asyncio.run(_record_into_state(state_dir, feedback))
    record_seconds = time.perf_counter() - started
    retrained, retrain_seconds = _retrain(repository, state_dir)
    evaluation = json.loads((retrained / "evaluation.json").read_text())
    breakdown = _by_target(version_dir, retrained, state_dir, config)
    if breakdown["all"]["retrained_recall@10"] != evaluation["recall@10"]:
        print("warning: the breakdown's cases differ from retrain's (its recall@10 is not evaluation.json's)")
    return {
        "drift": dataclasses.asdict(drift),
        "events": len(feedback.events),
        "upserted_items": len(feedback.upserts),
        "deleted_items": len(feedback.deletes),
        "record_seconds": round(record_seconds, 1),
        "retrain_seconds": round(retrain_seconds, 1),
        "retrained_version": retrained.name,
        "served_version_after": _served_version(repository, workdir),
        "evaluation": evaluation,
        "dataset": json.loads((retrained / "metadata.json").read_text())["dataset"],
        "by_target": breakdown,
    }


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repository",
        type=Path,
        help="use this repository's newest version (a demo build of its config.yaml) instead of building one; "
        "the retrained version goes to a work directory, not there",
    )
    parser.add_argument(
        "--num-users", type=int, help="demo users of version 1 (default: the committed config)"
    )
    parser.add_argument(
        "--num-items", type=int, help="demo items of version 1 (default: the committed config)"
    )
    parser.add_argument("--drift-users", type=int, default=3000, help="known users whose tastes drift")
    parser.add_argument("--new-users", type=int, default=300)
    parser.add_argument("--events-per-user", type=float, default=12.0)
    parser.add_argument("--new-items", type=int, default=200)
    parser.add_argument("--deleted-items", type=int, default=100)
    parser.add_argument("--seed", type=int, default=11, help="the drift's seed")
    parser.add_argument(
        "--mixed-topics",
        type=int,
        nargs="+",
        default=[1, 3],
        help="one scenario each: a trending theme is 1 demo topic (tastes shift between topics) or a share of "
        "N topics (new associations)",
    )
    parser.add_argument("--via", choices=["serve", "state"], default="serve", help="how events are recorded")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser.parse_args()


def _recserve(*args: str) -> subprocess.CompletedProcess[str]:
    """A `recserve` command in a child process; fails loudly with its output."""
    done = subprocess.run([sys.executable, "-m", "recserve", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"recserve {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )
    return done


def _build_base(workdir: Path, args: argparse.Namespace) -> Path:
    """Version 1 in a new repository with the committed config.yaml (its demo sizes as --num-* say)."""
    import yaml

    repository = workdir / "models"
    (repository / MODEL).mkdir(parents=True)
    document = yaml.safe_load((REPO_ROOT / "models" / MODEL / "config.yaml").read_text())
    for key, value in (("num_users", args.num_users), ("num_items", args.num_items)):
        if value is not None:
            document["demo"][key] = value  # in the file: retrain and the drift read the same settings
    (repository / MODEL / "config.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    started = time.perf_counter()
    _recserve("build-demo", "--model-repository", str(repository), "--no-progress")
    print(f"built version 1 in {time.perf_counter() - started:.0f} s")
    return repository


def _linked(source: Path, workdir: Path) -> Path:
    """A repository in `workdir` whose versions link to `source`'s: the new version goes there, not to source."""
    repository = workdir / "models"
    (repository / MODEL).mkdir(parents=True)
    shutil.copy(source / MODEL / "config.yaml", repository / MODEL / "config.yaml")
    for version in (source / MODEL).iterdir():
        if version.name.isdigit():
            (repository / MODEL / version.name).symlink_to(version.resolve(), target_is_directory=True)
    return repository


def _newest(repository: Path) -> Path:
    versions = [path for path in (repository / MODEL).iterdir() if path.name.isdigit()]
    return max(versions, key=lambda path: int(path.name))


def _record_through_server(
    repository: Path, state_dir: Path, feedback: DriftedFeedback, workdir: Path
) -> None:
    """Catalog changes, then events, through the public APIs of a real server, with a write token."""
    tokens = workdir / "tokens.yaml"
    token = _recserve("token", "create", "--name", "bench", "--role", "write", "--tokens-file", str(tokens))
    flags = [
        "--enable-events",
        "--enable-catalog",
        "--tokens-file",
        str(tokens),
        "--state-dir",
        str(state_dir),
    ]
    server = start_server(repository, flags, workdir)
    try:
        with RecommenderClient(server.address, token=token.stdout.strip(), timeout_s=30) as client:
            upserts = [(item.item_id, item.tags) for item in feedback.upserts]
            for start in range(0, len(upserts), CHUNK):
                client.upsert_items(upserts[start : start + CHUNK])
            deletes = [item.item_id for item in feedback.deletes]
            for start in range(0, len(deletes), CHUNK):
                client.delete_items(deletes[start : start + CHUNK])
            events = [Event(e.user_id, e.item_id, e.type.name, e.time_ms / 1000) for e in feedback.events]
            for start in range(0, len(events), CHUNK):
                client.record_events(events[start : start + CHUNK])
    finally:
        server.stop()  # SIGTERM: the log is flushed and closed


async def _record_into_state(state_dir: Path, feedback: DriftedFeedback) -> None:
    backend = MemoryBackend(state_dir, "everysec", 1000, max_context=1000, compact_log_bytes=64 << 20)
    await backend.open()
    await backend.record_catalog_changes([*feedback.upserts, *feedback.deletes])
    for start in range(0, len(feedback.events), CHUNK):
        await backend.record_events(feedback.events[start : start + CHUNK])
    await backend.close()


def _retrain(repository: Path, state_dir: Path) -> tuple[Path, float]:
    started = time.perf_counter()
    done = _recserve(
        "retrain", "--model-repository", str(repository), "--state-dir", str(state_dir), "--no-progress"
    )
    print(done.stdout.strip())
    return _newest(repository), time.perf_counter() - started


def _served_version(repository: Path, workdir: Path) -> str:
    """The version a server started on the repository now serves."""
    server = start_server(repository, ["--state-dir", str(workdir / "state-after")], workdir)
    try:
        with RecommenderClient(server.address) as client:
            return client.model_info().model_version
    finally:
        server.stop()


def _by_target(previous: Path, retrained: Path, state_dir: Path, config: Any) -> dict[str, dict[str, float]]:
    """Both versions on retrain's held-out cases (rebuilt the same way), by the target item's age."""
    from recserve.training.served import ServedVersion

    recorded = read_recorded_state(StateSettings(state_dir=state_dir))
    merged = merge_feedback(load_training_data(previous), recorded)
    interactions = merged.interactions
    split = split_by_time(interactions, config.context_length, config.ranker_holdout_per_user)
    cases = sample_cases(new_cases(split.test, interactions, merged.is_new), config.eval_users, config.seed)
    known = set((previous / "item_ids.txt").read_text().splitlines())
    is_old = np.array([interactions.item_ids[target - 1] in known for target in cases.targets])
    groups = {"all": np.ones(len(cases), dtype=bool), "old_items": is_old, "new_items": ~is_old}
    results: dict[str, dict[str, float]] = {
        group: {"cases": int(rows.sum())} for group, rows in groups.items()
    }
    for name, version in (("previous", previous), ("retrained", retrained)):
        with ServedVersion(version, recorded.catalog) as served:
            recommend = served.recommender(interactions.user_ids, interactions.item_ids)
            top = recommend(cases.user_indices, cases.contexts, 10)
        for group, rows in groups.items():
            results[group][f"{name}_recall@10"] = round(recall_at_k(top[rows], cases.targets[rows]), 4)
            results[group][f"{name}_ndcg@10"] = round(ndcg_at_k(top[rows], cases.targets[rows]), 4)
    return results


def _print(payload: dict[str, Any], scenario: dict[str, Any]) -> None:
    evaluation = scenario["evaluation"]
    print(
        f"\nmixed_topics={scenario['drift']['mixed_topics']} on {payload['machine']}: {scenario['events']} events, "
        f"{scenario['upserted_items']} new items, {scenario['deleted_items']} deleted, recorded via {payload['via']} "
        f"in {scenario['record_seconds']} s; retrain {scenario['retrain_seconds']} s; a server now serves version "
        f"{scenario['served_version_after']}"
    )
    print(f"{'cases (target item)':<22}{'n':>6}{'recall@10 v1':>14}{'v2':>8}{'ndcg@10 v1':>12}{'v2':>8}")
    for group, row in scenario["by_target"].items():
        print(
            f"{group:<22}{row['cases']:>6}{row['previous_recall@10']:>14.4f}{row['retrained_recall@10']:>8.4f}"
            f"{row['previous_ndcg@10']:>12.4f}{row['retrained_ndcg@10']:>8.4f}"
        )
    print(
        f"evaluation.json: recall@10 {evaluation['recall@10']} (v1 {evaluation['previous_recall@10']}), "
        f"ndcg@10 {evaluation['ndcg@10']} (v1 {evaluation['previous_ndcg@10']}), "
        f"popular recall@10 {evaluation['popular_recall@10']}, users {evaluation['users_evaluated']}"
    )


if __name__ == "__main__":
    main()
