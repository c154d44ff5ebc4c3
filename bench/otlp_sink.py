"""A stand-in OpenTelemetry collector for benchmarks: accepts OTLP/gRPC trace exports and counts the spans.

Run as its own process so its CPU is not the server's: `python bench/otlp_sink.py PORT_FILE`. It writes
its port to PORT_FILE once listening, and on SIGTERM prints `{"spans": N, "exports": M}` and exits.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class CountingSink(trace_service_pb2_grpc.TraceServiceServicer):
    """Counts exported spans; drops them."""

    def __init__(self) -> None:
        self.spans = 0
        self.exports = 0
        self._lock = threading.Lock()

    def Export(self, request, context):  # noqa: N802 - the OTLP method name
        """Accept one export batch."""
        count = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        with self._lock:
            self.spans += count
            self.exports += 1
        return trace_service_pb2.ExportTraceServiceResponse()


def main() -> None:
    """Serve until SIGTERM, then report the counts on stdout."""
    sink = CountingSink()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    Path(sys.argv[1]).write_text(str(port))
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    stopped.wait()
    server.stop(1)
    print(json.dumps({"spans": sink.spans, "exports": sink.exports}))


if __name__ == "__main__":
    main()
