"""The versions of the model serving now, as every request path sees them.

One mapping from version to its RecommenderService and a default version, replaced as a whole on every
change: a request takes the service it needs in one step and keeps it, so a swap never changes the version
under a request that has started, and the old service drains what it was given before it is closed.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

from recserve.server.exceptions import NotFoundError, UnavailableError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from recserve.server.recommender import RecommenderService

MODEL_STATES = ("loading", "ready", "failed", "stopping", "unloaded")


class ServiceSlot:
    """The serving versions; until one is installed callers get UNAVAILABLE.

    `state` is the model's load state as operators see it: loading, ready, failed, stopping or unloaded.
    """

    def __init__(self, model_name: str = "recommender") -> None:
        self.model_name = model_name
        self._services: Mapping[str, RecommenderService] = MappingProxyType({})
        self._default: RecommenderService | None = None
        self.state = "loading"
        self.rejected: dict[str, str] = {}
        """Versions that did not load or failed their smoke batch, with why."""

    @property
    def current(self) -> RecommenderService | None:
        """The default version's service, or None (for readers such as metrics, which must not raise)."""
        return self._default

    @property
    def served(self) -> Mapping[str, RecommenderService]:
        """Every serving version's service, by version (a snapshot: it never changes in place)."""
        return self._services

    def install(self, services: dict[str, RecommenderService], default: str | None = None) -> None:
        """Serve exactly `services` from now on; `default` (None: the highest) answers unpinned requests.

        An empty mapping serves nothing (the model is unloaded).
        """
        if default is None and services:
            default = max(services, key=int)
        self._services = MappingProxyType(dict(services))
        self._default = services[default] if default is not None else None
        if services:
            self.state = "ready"

    def set(self, service: RecommenderService | None) -> None:
        """Serve `service` alone (or nothing)."""
        self.install({service.model.version: service} if service is not None else {})

    def get(self, version: str = "", model_name: str | None = None) -> RecommenderService:
        """The service of `version` ("" = the default); errors name `model_name` (default: this model's).

        Raises:
            UnavailableError: nothing serves yet (loading, failed or unloaded).
            NotFoundError: `version` is not among the serving versions; the message names them.
        """
        name = model_name or self.model_name
        if self._default is None:
            if self.state == "unloaded":
                raise UnavailableError(
                    f"model '{name}' is unloaded; load '{self.model_name}' (RepositoryModelLoad, "
                    "`recserve models load`) to serve it again"
                )
            raise UnavailableError(f"model '{name}' is still loading or failed to load; retry shortly")
        if not version:
            return self._default
        service = self._services.get(version)
        if service is None:
            raise NotFoundError(
                f"model '{name}' version {version!r} is not served; served versions: "
                f"{', '.join(sorted(self._services, key=int))}"
            )
        return service

    def serving(self, model_name: str | None = None) -> list[RecommenderService]:
        """Every serving version's service, the default first. Raises UnavailableError as `get` does."""
        default = self.get(model_name=model_name)
        return [default, *(service for service in self._services.values() if service is not default)]
