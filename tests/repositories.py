"""Model repositories for tests: the session's built model under another config.yaml."""

from __future__ import annotations

from pathlib import Path

import yaml


def configured_like(model_repository: Path, target: Path, section: str, values: dict) -> Path:
    """A repository under `target` whose `recommender` config differs in `values` of `section` and whose
    version 1 links to the built one (no second build)."""
    source = model_repository / "recommender"
    model_dir = target / "recommender"
    model_dir.mkdir(parents=True)
    config = yaml.safe_load((source / "config.yaml").read_text())
    config.setdefault(section, {}).update(values)
    (model_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (model_dir / "1").symlink_to((source / "1").resolve(), target_is_directory=True)
    return target
