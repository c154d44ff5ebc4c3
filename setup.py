"""Builds the grpc++ extensions when grpc++ is installed; the package metadata is in pyproject.toml.

The extensions: the server's native gRPC front end and the load generator's native transport.
grpc++ comes from the system (Debian/Ubuntu: `apt-get install libgrpc++-dev pkg-config`; `make install`
installs it where it can). Without it they are skipped, and the server and `recserve loadtest` run on grpc.aio
alone.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup

NATIVE_MODULES = {
    "server.frontend._native": "server/frontend/_native.cc",  # the server's gRPC transport
    "client.loadtest._native": "client/loadtest/_native.cc",  # `recserve loadtest`'s transport
}


def grpcpp_flags() -> tuple[list[str], list[str]] | None:
    """Compiler and linker flags for grpc++, from pkg-config; None when it is not installed."""
    try:
        cflags = subprocess.run(
            ["pkg-config", "--cflags", "grpc++"], check=True, capture_output=True, text=True
        ).stdout
        libs = subprocess.run(
            ["pkg-config", "--libs", "grpc++"], check=True, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return shlex.split(cflags), shlex.split(libs)


def native_extensions() -> list[Pybind11Extension]:
    """The grpc++ extensions, or none when grpc++ is missing."""
    flags = grpcpp_flags()
    if flags is None:
        sys.stderr.write(
            "recserve: grpc++ not found (pkg-config grpc++); building without the native gRPC front end. "
            "Install libgrpc++-dev and pkg-config for it.\n"
        )
        return []
    cflags, libs = flags
    return [
        Pybind11Extension(
            name,
            [source],
            cxx_std=17,
            include_dirs=["native"],
            extra_compile_args=[*cflags, "-O2", "-fvisibility=hidden"],
            extra_link_args=libs,
        )
        for name, source in NATIVE_MODULES.items()
    ]


setup(ext_modules=native_extensions())
