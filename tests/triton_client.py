"""Triton's own Python client, `tritonclient.grpc`, loaded so that it can share a process with recserve.

tritonclient ships generated code for the same protobuf messages as protos/recserve/inference
(`inference.ModelInferRequest`, ...) under other file names, and protobuf refuses a second definition of a
symbol in its default descriptor pool: importing both is a TypeError, whichever comes second. The tests run
the server in-process, so the client's generated modules are built in a descriptor pool of their own. The
client's code and the bytes on the wire are untouched; only protobuf's in-process registry differs.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from google.protobuf import descriptor_pool


def import_tritonclient() -> tuple[ModuleType, ModuleType]:
    """`tritonclient.grpc` and `tritonclient.grpc.aio`, their messages in a private descriptor pool."""
    if "tritonclient.grpc" not in sys.modules:
        private = descriptor_pool.DescriptorPool()
        default = descriptor_pool.Default
        descriptor_pool.Default = lambda: private  # what the generated modules register into
        try:
            importlib.import_module("tritonclient.grpc")
            importlib.import_module("tritonclient.grpc.aio")
        finally:
            descriptor_pool.Default = default
    return sys.modules["tritonclient.grpc"], sys.modules["tritonclient.grpc.aio"]
