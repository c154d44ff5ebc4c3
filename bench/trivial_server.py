"""A trivial gRPC server for measuring the load generator's own ceiling: grpc.health.v1.Health/Check, answered
with pre-serialized bytes (no parsing, no work), plus server reflection so `recserve loadtest` needs no proto.

Run it as its own process (`python bench/trivial_server.py --port 0`): it prints `listening on HOST:PORT` once
it is serving, then serves until SIGINT/SIGTERM. `build_server()` is the same server for in-process tests.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
SERVING_BYTES = health_pb2.HealthCheckResponse(
    status=health_pb2.HealthCheckResponse.SERVING
).SerializeToString()


async def _check(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return SERVING_BYTES


async def build_server(host: str = "127.0.0.1", port: int = 0) -> tuple[grpc.aio.Server, int]:
    """A started server answering Health/Check with SERVING for any request; returns it and its port."""
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        HEALTH_SERVICE,
        {"Check": grpc.unary_unary_rpc_method_handler(_check)},  # no (de)serializers: bytes in, bytes out
    )
    server.add_generic_rpc_handlers((handler,))
    reflection.enable_server_reflection((HEALTH_SERVICE, reflection.SERVICE_NAME), server)
    bound_port = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, bound_port


async def _serve(host: str, port: int) -> None:
    server, bound_port = await build_server(host, port)
    sys.stdout.write(f"listening on {host}:{bound_port}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(grace=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args()
    asyncio.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
