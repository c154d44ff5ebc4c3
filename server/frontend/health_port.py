"""A second, plaintext port that serves only grpc.health.v1 (`tls.plaintext_health_port`).

Kubernetes' gRPC probes cannot speak TLS, so a TLS-only gRPC port would fail every probe. This port is the
way around it: it shares the main port's health servicer, so it reports the same status at every moment
(NOT_SERVING while the model loads and while the server drains), and serves nothing else: no API, no
reflection. It is a small grpc.aio server whichever front end serves the main port.
"""

from __future__ import annotations

import grpc
import grpc.aio
from grpc_health.v1 import health

from recserve.server.exceptions import StartupError
from recserve.server.servicers.health import health_handlers


async def start_health_port(
    health_servicer: health.aio.HealthServicer, host: str, port: int, shared: bool = False
) -> tuple[grpc.aio.Server, int]:
    """Bind `host:port` (0 picks a free port) in plaintext, serve health only; the server and its port.

    `shared`: other workers bind the same port (SO_REUSEPORT).

    Raises:
        StartupError: the port cannot be bound.
    """
    server = grpc.aio.server(options=[("grpc.so_reuseport", int(shared))])
    server.add_generic_rpc_handlers((health_handlers(health_servicer),))  # bad bytes: INVALID_ARGUMENT
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as error:
        bound, reason = 0, str(error)
    else:
        reason = "nothing bound"
    if bound == 0:
        raise StartupError(
            f"cannot bind the plaintext health port {host}:{port} (tls.plaintext_health_port): {reason}"
        )
    await server.start()
    return server, bound
