"""Which role each service needs, and the check of one call's `authorization: Bearer <token>` metadata.

Reads (Recommender, the inference protocol) are open unless `auth.require_for_reads`; the write services
need `write`; model control needs `admin`; health and reflection are always open. Writes are never open by
accident: enabling a write service without a tokens file stops the server at start-up unless
`auth.allow_unauthenticated_writes` says so out loud.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from recserve.server.auth.tokens import Role, TokensFileError, TokenStore
from recserve.server.exceptions import PermissionDeniedError, StartupError, UnauthenticatedError
from recserve.server.settings import AuthSettings

logger = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
BEARER = "bearer "
Metadata = Sequence[tuple[str, str | bytes]]


class RoleCheck:
    """The check run before every call of one service: a known token holding `role`."""

    __slots__ = ("role", "_store")

    def __init__(self, role: Role, store: TokenStore) -> None:
        self.role = role
        self._store = store

    def __call__(self, metadata: Metadata, method: str) -> str:
        """The name of the caller's token.

        Raises:
            UnauthenticatedError: no bearer token, or one this server does not know.
            PermissionDeniedError: a known token without the role.
        """
        token = bearer_token(metadata)
        if token is None:
            raise UnauthenticatedError(
                f"{method} needs a bearer token with the `{self.role.value}` role: send the metadata "
                "`authorization: Bearer <token>`"
            )
        entry = self._store.find(token)
        if entry is None:
            raise UnauthenticatedError("the bearer token is not known to this server (revoked or mistyped?)")
        if not entry.grants(self.role):
            logger.warning("auth: token %r lacks the %s role for %s", entry.name, self.role.value, method)
            raise PermissionDeniedError(
                f"token {entry.name!r} lacks the `{self.role.value}` role that {method} needs"
            )
        return entry.name


def bearer_token(metadata: Metadata) -> str | None:
    """The token of the first `authorization: Bearer ...` entry; None when there is none."""
    for key, value in metadata:
        if key != AUTHORIZATION:
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        if text[: len(BEARER)].lower() == BEARER:
            token = text[len(BEARER) :].strip()
            return token or None
    return None


class Authorizer:
    """The role checks of one server, from its `auth` settings (and which write services are on)."""

    def __init__(self, settings: AuthSettings) -> None:
        """Read the tokens file.

        Raises:
            StartupError: the tokens file is missing or invalid, or reads need tokens and there is none.
        """
        self.settings = settings
        self.store: TokenStore | None = None
        if settings.tokens_file is not None:
            try:
                self.store = TokenStore(settings.tokens_file, settings.reload_interval_seconds)
            except TokensFileError as error:
                raise StartupError(f"{error} (auth.tokens_file, --tokens-file)") from error
            logger.info("auth: %d tokens from %s", len(self.store), settings.tokens_file)
        if settings.require_for_reads and self.store is None:
            raise StartupError(
                "auth.require_for_reads needs tokens: set auth.tokens_file (--tokens-file, "
                "RECSERVE_AUTH__TOKENS_FILE)"
            )

    def reads(self) -> RoleCheck | None:
        """The check of Recommender and inference calls; None when reads are open."""
        if not self.settings.require_for_reads or self.store is None:
            return None
        return RoleCheck(Role.READ, self.store)

    def writes(self, service: str) -> RoleCheck | None:
        """The check of an enabled write service; None only when unauthenticated writes are allowed.

        Raises:
            StartupError: no tokens file and unauthenticated writes are not allowed.
        """
        if self.store is not None:
            return RoleCheck(Role.WRITE, self.store)
        if not self.settings.allow_unauthenticated_writes:
            raise StartupError(
                f"{service} is enabled but no tokens are configured, so anyone could write: set "
                "auth.tokens_file (--tokens-file; `recserve token create` makes tokens), or "
                "auth.allow_unauthenticated_writes: true for local development"
            )
        logger.warning("auth: %s takes writes from anyone (auth.allow_unauthenticated_writes)", service)
        return None

    def admin(self, service: str) -> RoleCheck:
        """The check of model-control calls: always a token with the admin role.

        Raises:
            StartupError: no tokens file.
        """
        if self.store is None:
            raise StartupError(
                f"{service} is enabled but no tokens are configured: set auth.tokens_file (--tokens-file) "
                "with a token holding the admin role"
            )
        return RoleCheck(Role.ADMIN, self.store)

    def admin_if_configured(self) -> RoleCheck | None:
        """The admin check where tokens are configured, else None (for calls refused in any case)."""
        return RoleCheck(Role.ADMIN, self.store) if self.store is not None else None
