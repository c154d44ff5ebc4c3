"""The gRPC transport under the servicers: grpc++ through `native` when it is built, else grpc.aio.

Both take the same handlers and give them the same servicer context API; `build_grpc_server` picks one and
`bind_and_start` hides the differences in their lifecycles (grpc.aio binds a port when it is added,
grpc++ when the server starts) and in how they take TLS (`tls.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import grpc.aio

from recserve.server.exceptions import StartupError
from recserve.server.frontend.tls import add_secure_port
from recserve.server.settings import TlsSettings

logger = logging.getLogger(__name__)

FrontendName = Literal["auto", "native", "aio"]


def native_available() -> bool:
    """Whether the grpc++ front end is built and loads."""
    try:
        from recserve.server.frontend import native  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_frontend(name: FrontendName) -> Literal["native", "aio"]:
    """The front end `name` selects here; `native` when it is not built is an error, `auto` falls back."""
    if name == "aio":
        return "aio"
    if native_available():
        return "native"
    if name == "native":
        raise RuntimeError(
            "frontend=native, but the grpc++ front end is not built: install libgrpc++-dev and reinstall "
            "recserve (make install), or use --frontend aio"
        )
    return "aio"


def build_grpc_server(
    name: FrontendName, options: Sequence[tuple[str, int | str]], maximum_concurrent_rpcs: int | None
) -> Any:
    """A gRPC server of the chosen front end, not yet bound."""
    if resolve_frontend(name) == "native":
        from recserve.server.frontend.native import NativeServer

        return NativeServer(options, maximum_concurrent_rpcs)
    return grpc.aio.server(options=list(options), maximum_concurrent_rpcs=maximum_concurrent_rpcs)


async def bind_and_start(server: Any, address: str, tls: TlsSettings | None = None) -> int:
    """Bind `address` (TLS-only when `tls` is enabled), start serving, and return the bound port.

    Raises:
        StartupError: `tls` names files that are missing, unreadable or do not fit together, or the port
            cannot be bound (in use, or a host that is not this machine's).
    """
    try:
        if tls is not None and tls.enabled:
            port = add_secure_port(server, address, tls)
        else:
            port = server.add_insecure_port(address)
        started = await server.start()
    except RuntimeError as error:  # grpc.aio refuses the address, grpc++ fails to start on it
        raise StartupError(f"cannot bind the gRPC port {address} (is it in use?): {error}") from error
    if isinstance(started, list):  # grpc++ binds on start
        port = started[0]
    if port == 0:
        raise StartupError(f"cannot bind the gRPC port {address} (is it in use?)")
    return port
