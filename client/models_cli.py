"""The CLI's model-repository commands: list, load and unload ask the server; seal works on the files.

list, load and unload are the KServe repository calls (load and unload need a server started with
model_control_mode: explicit and a token with the admin role). `seal` writes a version directory's
manifest.json (server/manifest.py), for versions made by hand or by other tools: a server counts a version
directory only once its manifest matches every file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from recserve.client.client import RecommenderClient
from recserve.client.live_cli import AddCommand
from recserve.server.manifest import incompleteness, write_manifest


def add_models_command(subparsers: argparse._SubParsersAction, add_command: AddCommand) -> None:
    """Register `models` and its actions list, load, unload (calls to a server) and seal."""
    models = subparsers.add_parser(
        "models", help="the model repository: versions the server has, loading and unloading them"
    )
    actions = models.add_subparsers(dest="models_action", required=True, metavar="ACTION")
    add_command(actions, "list", _list, "Every model version the server knows, its state and why.")
    for name, command, summary in (
        ("load", _load, "Load the versions the model's policy picks now (explicit mode, admin token)."),
        ("unload", _unload, "Stop serving every version of the model (explicit mode, admin token)."),
    ):
        action = add_command(actions, name, command, summary)
        action.add_argument("model", nargs="?", default="recommender", help="model (default recommender)")
    seal = actions.add_parser(
        "seal",
        help="write a version directory's manifest.json (its files and sizes): the version is complete",
        description="Write VERSION_DIR/manifest.json listing every file with its size, last. A server "
        "loads a version directory only when its manifest matches, so copy the manifest last or seal "
        "the directory once every file is in place.",
    )
    seal.add_argument("version_dir", type=Path, metavar="VERSION_DIR", help="e.g. models/recommender/3")
    seal.set_defaults(func=_seal)


def _list(args: argparse.Namespace, client: RecommenderClient, console: Console) -> int:
    rows = [row for row in client.model_versions() if row.model_name == "recommender"]
    if args.json:
        console.print_json(data=[vars(row) for row in rows])
        return 0
    for row in rows:
        reason = f"  {row.reason}" if row.reason else ""
        console.print(f"{row.model_name} {row.version} {row.state}{reason}", markup=False, highlight=False)
    return 0


def _load(args: argparse.Namespace, client: RecommenderClient, console: Console) -> int:
    client.load_model(args.model)
    return _list(args, client, console)


def _unload(args: argparse.Namespace, client: RecommenderClient, console: Console) -> int:
    client.unload_model(args.model)
    return _list(args, client, console)


def _seal(args: argparse.Namespace) -> int:
    version_dir: Path = args.version_dir
    if not (version_dir / "metadata.json").is_file():
        sys.stderr.write(f"error: {version_dir} is not a model version directory (no metadata.json)\n")
        return 2
    write_manifest(version_dir)
    problem = incompleteness(version_dir)
    if problem is not None:  # a file changed while it was listed
        sys.stderr.write(f"error: {version_dir}: {problem}\n")
        return 1
    sys.stdout.write(f"sealed {version_dir}\n")
    return 0
