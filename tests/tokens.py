"""Test helper: a real tokens file with one token per role (and one holding read and write)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from recserve.server.auth import Role, new_token, token_entry
from recserve.server.settings import AuthSettings


@dataclass(frozen=True)
class Tokens:
    """Fresh tokens written (as hashes) to `file`."""

    file: Path
    read: str
    write: str
    admin: str
    read_write: str

    @classmethod
    def create(cls, folder: Path) -> Tokens:
        folder.mkdir(parents=True, exist_ok=True)
        tokens = cls(folder / "tokens.yaml", new_token(), new_token(), new_token(), new_token())
        entries = [
            token_entry("reader", tokens.read, [Role.READ]),
            token_entry("writer", tokens.write, [Role.WRITE]),
            token_entry("operator", tokens.admin, [Role.ADMIN]),
            token_entry("reader-writer", tokens.read_write, [Role.READ, Role.WRITE]),
        ]
        tokens.file.write_text(yaml.safe_dump({"tokens": entries}))
        return tokens

    def settings(self, **fields: object) -> AuthSettings:
        """Auth settings reading this file (re-read at most every 0.1 s, so tests see edits quickly)."""
        return AuthSettings(tokens_file=self.file, reload_interval_seconds=0.1, **fields)


def bearer(token: str) -> tuple[tuple[str, str]]:
    """Call metadata carrying `token`."""
    return (("authorization", f"Bearer {token}"),)
