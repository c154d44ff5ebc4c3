"""The README is the newcomer's guide: it must document every option and the two commands."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from recserve.server.cli import build_parser
from recserve.server.settings import (
    AuthSettings,
    BatchingSettings,
    LimitSettings,
    RetrievalSettings,
    ServerSettings,
    StateSettings,
    TlsSettings,
    TracingSettings,
)

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_server_setting_is_documented() -> None:
    missing = [name for name in ServerSettings.model_fields if f"`{name}`" not in README]
    assert not missing, f"README lacks server settings {missing}"


def documented_keys(prefix: str, model: type[BaseModel]) -> list[str]:
    """Dotted keys of every leaf setting of `model`."""
    keys = []
    for name, info in model.model_fields.items():
        nested = (
            info.annotation
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
            else None
        )
        keys += documented_keys(f"{prefix}.{name}", nested) if nested else [f"{prefix}.{name}"]
    return keys


@pytest.mark.parametrize(
    "section, model",
    [("tracing", TracingSettings), ("state", StateSettings), ("tls", TlsSettings), ("auth", AuthSettings)],
)
def test_every_nested_server_setting_is_documented(section: str, model: type[BaseModel]) -> None:
    missing = [key for key in documented_keys(section, model) if f"`{key}`" not in README]
    assert not missing, f"README lacks {section} settings {missing}"


def test_every_model_setting_is_documented() -> None:
    sections = {"batching": BatchingSettings, "retrieval": RetrievalSettings, "limits": LimitSettings}
    keys = [key for section, model in sections.items() for key in documented_keys(section, model)]
    missing = [key for key in keys if f"`{key}`" not in README]
    assert "batching.adaptive.enabled" in keys
    assert not missing, f"README lacks model settings {missing}"


def test_every_serve_flag_is_documented() -> None:
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    flags = [
        option for action in serve._actions for option in action.option_strings if option.startswith("--")
    ]
    missing = [flag for flag in flags if flag not in README and flag not in ("--help", "--config")]
    assert not missing, f"README lacks serve flags {missing}"


def test_readme_shows_the_two_commands() -> None:
    assert "make serve" in README and "make test" in README
