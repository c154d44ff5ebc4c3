"""The CLI's model-repository commands: `recserve models seal` now; list, load and unload ask the server.

`seal` writes a version directory's manifest.json (server/manifest.py), for versions made by hand or by
other tools: a server counts a version directory only once its manifest matches every file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recserve.server.manifest import incompleteness, write_manifest


def add_models_command(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Register `models` and its `seal` action; returns the actions, for the commands that call a server."""
    models = subparsers.add_parser(
        "models", help="the model repository: versions the server has, loading and unloading them"
    )
    actions = models.add_subparsers(dest="models_action", required=True, metavar="ACTION")
    seal = actions.add_parser(
        "seal",
        help="write a version directory's manifest.json (its files and sizes): the version is complete",
        description="Write VERSION_DIR/manifest.json listing every file with its size, last. A server "
        "loads a version directory only when its manifest matches, so copy the manifest last or seal "
        "the directory once every file is in place.",
    )
    seal.add_argument("version_dir", type=Path, metavar="VERSION_DIR", help="e.g. models/recommender/3")
    seal.set_defaults(func=_seal)
    return actions


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
