"""A version directory counts only when complete: its manifest.json, written last, matches every file."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recserve.client import RecommenderClient
from recserve.server.exceptions import UnavailableError
from recserve.server.manifest import MANIFEST, incompleteness
from recserve.server.repository import complete_versions, resolve_version_dir
from recserve.server.settings import ServerSettings, StateSettings
from tests.serving import ServerThread


def half_copied(source: Path, target: Path) -> None:
    """`source` copied with its manifest first and the ranker's graph cut short, as a copy under way."""
    shutil.copytree(source, target)
    graph = target / "ranker" / "saved_model.pb"
    graph.write_bytes(graph.read_bytes()[:100])


def repository_with(version_dir: Path, root: Path) -> Path:
    """A model directory whose version 1 is the session's model; returns the model directory."""
    model_dir = root / "models" / "recommender"
    model_dir.mkdir(parents=True)
    shutil.copy(version_dir.parent / "config.yaml", model_dir / "config.yaml")
    (model_dir / "1").symlink_to(version_dir.resolve(), target_is_directory=True)
    return model_dir


def test_a_built_version_is_complete(version_dir: Path) -> None:
    assert incompleteness(version_dir) is None
    listed = (version_dir / MANIFEST).read_text()
    assert '"ranker/saved_model.pb"' in listed and '"metadata.json"' in listed


def test_a_version_still_being_copied_is_skipped_with_its_reason(version_dir: Path, tmp_path: Path) -> None:
    model_dir = repository_with(version_dir, tmp_path)
    half_copied(version_dir, model_dir / "2")
    complete, incomplete = complete_versions(model_dir)
    assert complete == ["1"]
    assert "ranker/saved_model.pb has 100 of" in incomplete["2"]
    assert resolve_version_dir(model_dir) == model_dir / "1"
    with pytest.raises(UnavailableError, match="version 2 .* is incomplete against manifest.json"):
        resolve_version_dir(model_dir, "2")


def test_a_directory_without_a_manifest_names_the_command_that_seals_it(
    version_dir: Path, tmp_path: Path
) -> None:
    model_dir = repository_with(version_dir, tmp_path)
    shutil.copytree(version_dir, model_dir / "2", ignore=shutil.ignore_patterns(MANIFEST))
    assert "recserve models seal" in complete_versions(model_dir)[1]["2"]
    sealed = subprocess.run(
        [sys.executable, "-m", "recserve", "models", "seal", str(model_dir / "2")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sealed.returncode == 0, sealed.stderr
    assert complete_versions(model_dir) == (["1", "2"], {})


def test_sealing_a_directory_that_is_no_version_fails(tmp_path: Path) -> None:
    sealed = subprocess.run(
        [sys.executable, "-m", "recserve", "models", "seal", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sealed.returncode == 2
    assert "not a model version directory" in sealed.stderr
    assert not (tmp_path / MANIFEST).exists()


def test_a_server_serves_the_newest_complete_version(
    server_settings: ServerSettings, version_dir: Path, tmp_path: Path
) -> None:
    model_dir = repository_with(version_dir, tmp_path)
    half_copied(version_dir, model_dir / "2")
    settings = server_settings.model_copy(
        update={"model_repository": model_dir.parent, "state": StateSettings(state_dir=tmp_path / "state")}
    )
    with ServerThread(settings) as server, RecommenderClient(server.address, timeout_s=10) as client:
        assert client.model_info().model_version == "1"
        assert len(client.recommend("user-1", k=3).items) == 3
        assert "2" not in server.running.slot.rejected  # not damaged: not there yet
