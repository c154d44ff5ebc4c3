"""The package layout and the grpc++ extensions; the package metadata is in pyproject.toml.

Everything installs under one import namespace, `recserve`, while the source tree keeps one top-level
folder per part (`server/`, `client/`, `training/`, `native/`, and the generated code beside its .proto files
in `protos/recserve/`): PACKAGE_DIRS maps each folder to its place in the namespace.

The extensions, built into `recserve.native`: the server's native gRPC front end and the load generator's
native transport, which need grpc++, and the batched Annoy lookups, which need only a C++17 compiler.
grpc++ comes from the system (Debian/Ubuntu: `apt-get install libgrpc++-dev pkg-config`; `make install`
installs it where it can). Without it the first two are skipped, and the server and `recserve loadtest` run on
grpc.aio alone.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

from pybind11.setup_helpers import Pybind11Extension
from setuptools import find_packages, setup

# The namespace root is the generated code's folder: `recserve.v1` (our API) and `recserve.inference` (the
# KServe v2 protocol) are where protoc writes them, so their imports need no patching.
PACKAGE_DIRS = {
    "recserve": "protos/recserve",
    "recserve.server": "server",
    "recserve.client": "client",
    "recserve.training": "training",
    "recserve.native": "native",
}

NATIVE_MODULES = {
    "recserve.native._frontend": "native/frontend.cc",  # the server's gRPC transport
    "recserve.native._loadtest": "native/loadtest.cc",  # `recserve loadtest`'s transport
}
NATIVE_HEADERS = ["native/event_queue.h", "native/grpc_tuning.h"]
ANNOY_SEARCH = ("recserve.native._annoy_search", "native/annoy_search.cc")  # batched lookups, no GIL


def packages() -> list[str]:
    """Every package under each folder of PACKAGE_DIRS, found rather than listed so none is forgotten."""
    found = []
    for name, folder in PACKAGE_DIRS.items():
        found.append(name)
        found += [f"{name}.{sub}" for sub in find_packages(folder)]
    return found


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
    """Every extension: the grpc++ ones only when grpc++ is installed."""
    name, source = ANNOY_SEARCH
    annoy_search = Pybind11Extension(
        name, [source], cxx_std=17, extra_compile_args=["-O3", "-fvisibility=hidden"]
    )
    return [annoy_search, *grpcpp_extensions()]


def grpcpp_extensions() -> list[Pybind11Extension]:
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
            depends=NATIVE_HEADERS,
            cxx_std=17,
            include_dirs=["native"],
            extra_compile_args=[*cflags, "-O2", "-fvisibility=hidden"],
            extra_link_args=libs,
        )
        for name, source in NATIVE_MODULES.items()
    ]


setup(
    packages=packages(),
    package_dir=PACKAGE_DIRS,
    # The protos' descriptors with their comments, for server reflection (protos/generate.py).
    package_data={"recserve": ["descriptors.binpb"]},
    ext_modules=native_extensions(),
)
