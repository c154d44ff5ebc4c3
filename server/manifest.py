"""A version directory's manifest: the file written last that makes it complete.

A build publishes a version by renaming a finished staging directory, but versions also arrive by `cp -r`,
rsync or a volume sync, which write files in any order: a server polling the repository must not load a
directory that is still being copied. `manifest.json` lists every file of the version with its size; a
directory counts as complete only when the manifest exists and every file it names is there at that size,
so the order files are copied in does not matter.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MANIFEST = "manifest.json"
MAX_NAMED = 3


def write_manifest(version_dir: Path) -> Path:
    """List every file under `version_dir` with its size in `manifest.json` (atomically, last)."""
    files = {
        path.relative_to(version_dir).as_posix(): path.stat().st_size
        for path in sorted(version_dir.rglob("*"))
        if path.is_file() and path.name != MANIFEST and not path.name.startswith(f"{MANIFEST}.")
    }
    target = version_dir / MANIFEST
    temporary = version_dir / f"{MANIFEST}.tmp"
    temporary.write_text(json.dumps({"files": files}, indent=1, sort_keys=True) + "\n")
    os.replace(temporary, target)
    return target


def incompleteness(version_dir: Path) -> str | None:
    """Why `version_dir` is not a complete version yet, or None when it is."""
    try:
        listed = json.loads((version_dir / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return (
            f"no {MANIFEST} yet (still being written or copied; a version built by hand gets one with "
            f"`recserve models seal {version_dir}`)"
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{MANIFEST} is unreadable ({type(error).__name__}: {error})"
    problems = []
    for name, size in listed.items():
        try:
            actual = (version_dir / name).stat().st_size
        except OSError:
            problems.append(f"{name} is missing")
            continue
        if actual != size:
            problems.append(f"{name} has {actual:,} of {size:,} bytes")
    if not problems:
        return None
    more = f" and {len(problems) - MAX_NAMED} more" if len(problems) > MAX_NAMED else ""
    return f"incomplete against {MANIFEST}: {'; '.join(problems[:MAX_NAMED])}{more}"
