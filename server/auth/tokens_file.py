"""Writing the tokens file: what `recserve token create` appends (the server only ever reads it)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from recserve.server.auth.tokens import Role, TokensFileError, new_token, parse_tokens, token_entry


def new_token_entry(name: str, roles: list[str]) -> tuple[str, dict[str, object]]:
    """A fresh token and its tokens-file entry."""
    token = new_token()
    return token, token_entry(name, token, [Role(role) for role in dict.fromkeys(roles)])


def append_entry(path: Path, entry: dict[str, object]) -> None:
    """Add `entry` to the tokens file at `path`, creating it readable by its owner only.

    The file is replaced atomically (written beside, then renamed), so a server re-reading it never sees
    half a file.

    Raises:
        TokensFileError: the existing file is invalid, or already has a token of that name.
        OSError: the file cannot be written.
    """
    entries: list[object] = []
    if path.exists():
        text = path.read_text()
        if text.strip():
            parse_tokens(text, str(path))  # refuse to append to a file the server would reject
            entries = list((yaml.safe_load(text) or {}).get("tokens", []))
    if any(isinstance(item, dict) and item.get("name") == entry["name"] for item in entries):
        raise TokensFileError(f"{path} already has a token named {entry['name']!r}; choose another name")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.new")
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as sink:
        sink.write(yaml.safe_dump({"tokens": [*entries, entry]}, sort_keys=False))
    os.replace(staging, path)
