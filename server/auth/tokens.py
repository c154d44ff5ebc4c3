"""The tokens file: SHA-256 hashes of bearer tokens, each with a name and roles; re-read when it changes.

    tokens:
      - name: ingest-pipeline        # who holds it: appears in logs when it is used or refused
        sha256: 9f86d08...           # hex SHA-256 of the token; the token itself is never stored
        roles: [write]

Tokens are long random strings (`new_token`), so a plain SHA-256 is enough: there is nothing to guess that
a slow hash would protect. A presented token is hashed and compared with every entry in constant time.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "rs_"


class Role(enum.Enum):
    """What a token may do. `admin` may do everything; `read` and `write` are independent."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


@dataclass(frozen=True)
class TokenEntry:
    """One line of the tokens file."""

    name: str
    digest: bytes
    roles: frozenset[Role]

    def grants(self, role: Role) -> bool:
        """Whether this token may make a call that needs `role`."""
        return role in self.roles or Role.ADMIN in self.roles


class TokensFileError(ValueError):
    """The tokens file cannot be read or is not in the documented format; the message says where."""


def new_token() -> str:
    """A fresh random token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> bytes:
    """The SHA-256 of a token, as stored (hex) in the tokens file."""
    return hashlib.sha256(token.encode()).digest()


def token_entry(name: str, token: str, roles: list[Role]) -> dict[str, object]:
    """The tokens-file entry for `token` (what `recserve token create` appends)."""
    return {"name": name, "sha256": token_digest(token).hex(), "roles": [role.value for role in roles]}


def parse_tokens(text: str, source: str) -> tuple[TokenEntry, ...]:
    """The entries of a tokens file.

    Raises:
        TokensFileError: not YAML, or an entry lacks a name, a 64-hex-digit sha256 or known roles.
    """
    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise TokensFileError(f"{source} is not valid YAML: {error}") from error
    items = document.get("tokens") if isinstance(document, dict) else None
    if not isinstance(items, list):
        raise TokensFileError(f"{source}: expected a top-level `tokens:` list")
    return tuple(_entry(item, f"{source}: tokens[{index}]") for index, item in enumerate(items))


def _entry(item: object, where: str) -> TokenEntry:
    if not isinstance(item, dict):
        raise TokensFileError(f"{where} must be a mapping with name, sha256 and roles")
    name, digest, roles = item.get("name"), item.get("sha256"), item.get("roles")
    if not isinstance(name, str) or not name:
        raise TokensFileError(f"{where}.name must be a non-empty string")
    try:
        raw = bytes.fromhex(digest) if isinstance(digest, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != hashlib.sha256().digest_size:
        raise TokensFileError(f"{where}.sha256 must be 64 hex digits in quotes (the SHA-256 of the token)")
    known = {role.value for role in Role}
    if not isinstance(roles, list) or not roles or any(role not in known for role in roles):
        raise TokensFileError(f"{where}.roles must be a non-empty list of {sorted(known)}")
    return TokenEntry(name, raw, frozenset(Role(role) for role in roles))


class TokenStore:
    """The tokens of one file, re-read when the file changes (checked at most every `reload_interval_s`).

    A file that turns unreadable or invalid keeps the tokens last read (and says so in the log), so a bad
    edit never locks every client out or lets everyone in.
    """

    def __init__(self, path: Path, reload_interval_s: float = 5.0) -> None:
        """Read `path` now.

        Raises:
            TokensFileError: the file is missing, unreadable or invalid.
        """
        self._path = path
        self._interval_s = reload_interval_s
        text = self._read_text()
        self._digest = hashlib.sha256(text.encode()).digest()
        self._entries = parse_tokens(text, str(self._path))
        self._refused_digest: bytes | None = None
        self._checked_at = time.monotonic()
        self.reloads = 0
        self.reload_failures = 0

    def __len__(self) -> int:
        return len(self._entries)

    def find(self, token: str) -> TokenEntry | None:
        """The entry of `token`, or None; every entry is compared, in constant time."""
        self._maybe_reload()
        digest = token_digest(token)
        found = None
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        return found

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < self._interval_s:
            return
        self._checked_at = now
        try:
            text = self._read_text()
        except TokensFileError as error:
            self._refuse(None, error)
            return
        digest = hashlib.sha256(text.encode()).digest()
        if digest in (self._digest, self._refused_digest):
            return
        try:
            entries = parse_tokens(text, str(self._path))
        except TokensFileError as error:
            self._refuse(digest, error)  # said once per broken content, not at every check
            return
        self._digest, self._entries = digest, entries
        self.reloads += 1
        logger.info("auth: %s re-read, %d tokens", self._path, len(entries))

    def _refuse(self, digest: bytes | None, error: TokensFileError) -> None:
        self.reload_failures += 1
        self._refused_digest = digest
        logger.error("auth: keeping the %d tokens read before: %s", len(self._entries), error)

    def _read_text(self) -> str:
        """The file's text, read whole at every check.

        Its content decides, not its timestamps: an edit within the file system's timestamp granularity
        keeps the size and the mtime.
        """
        try:
            return self._path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "not UTF-8"
            raise TokensFileError(f"cannot read the tokens file {self._path}: {reason}") from error
