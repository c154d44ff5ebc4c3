"""Settings precedence (flags > RECSERVE_* env > YAML > defaults) and the model config."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from recserve.server.cli import main as recserve_main
from recserve.server.settings import (
    ModelConfig,
    ServerSettings,
    effective_batching,
    load_model_config,
    load_server_settings,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("RECSERVE_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = load_server_settings()
    assert settings.grpc_port == 8001
    assert settings.model_repository == Path("models")
    assert settings.model_name == "recommender"


def test_precedence_flags_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("grpc_port: 7000\nmodel_name: from-file\nlog_level: DEBUG\n")
    monkeypatch.setenv("RECSERVE_GRPC_PORT", "7100")
    monkeypatch.setenv("RECSERVE_MODEL_NAME", "from-env")
    settings = load_server_settings(config, model_name="from-flag", grpc_host=None)
    assert settings.model_name == "from-flag"
    assert settings.grpc_port == 7100
    assert settings.log_level == "DEBUG"


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("max_batch_size: 8\n")
    monkeypatch.setenv("RECSERVE_CONFIG", str(config))
    assert load_server_settings().max_batch_size == 8


def test_bad_values_and_unknown_keys_are_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="grpc_port"):
        load_server_settings(grpc_port=70000)
    config = tmp_path / "server.yaml"
    config.write_text("grcp_port: 1\n")
    with pytest.raises(ValidationError, match="grcp_port"):
        load_server_settings(config)
    monkeypatch.setenv("RECSERVE_MAX_BATCH_SIZE", "zero")
    with pytest.raises(ValidationError, match="max_batch_size"):
        load_server_settings()


@pytest.mark.parametrize(
    ("text", "complaint"),
    [("grpc_port: [8021\n", "is not valid YAML"), ("- grpc_port: 1\n", "must hold a mapping of settings")],
)
def test_a_config_file_that_is_no_mapping_is_one_clear_error(
    tmp_path: Path, text: str, complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "server.yaml"
    config.write_text(text)
    with pytest.raises(ValueError, match=complaint):
        load_server_settings(config)
    assert recserve_main(["serve", "--config", str(config)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith("error: invalid settings: config file") and complaint in line


def test_committed_model_config_parses() -> None:
    config = load_model_config(REPO_ROOT / "models" / "recommender")
    assert config.name == "recommender"
    assert config.batching.max_batch_size >= 1
    assert config.limits.default_k == 10


def test_missing_model_config_gives_defaults(tmp_path: Path) -> None:
    assert load_model_config(tmp_path / "other") == ModelConfig(name="other")


def test_command_line_overrides_batching() -> None:
    model = ModelConfig()
    settings = ServerSettings(max_batch_size=1, max_queue_delay_us=0)
    batching = effective_batching(settings, model)
    assert (batching.max_batch_size, batching.max_queue_delay_microseconds) == (1, 0)
    assert batching.max_queue_size == model.batching.max_queue_size
    assert effective_batching(ServerSettings(), model) == model.batching
