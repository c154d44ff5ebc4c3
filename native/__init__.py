"""The C++ extensions and their loader: both native transports, and the batched Annoy lookups.

`frontend.cc` builds `_frontend` (the server's gRPC transport, wrapped by `recserve.server.frontend.native`),
`loadtest.cc` builds `_loadtest` (`recserve loadtest`'s transport, wrapped by
`recserve.client.loadtest.native_channel`); `event_queue.h` is shared by both. `setup.py` builds them when
grpc++ is installed (`pkg-config grpc++`); without it they are absent and `load_extension` raises ImportError.
`annoy_search.cc` builds `_annoy_search` (wrapped by `recserve.server.runtime.ann_index`), always.

TensorFlow's libtensorflow_cc carries its own, different build of grpc++ and exports its symbols process-wide.
An extension loaded the usual way would bind some grpc++ calls to that copy and crash. RTLD_DEEPBIND makes
the extension and the grpc++ libraries it loads look up symbols among themselves first, whatever was loaded
before them.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType


def load_extension(name: str) -> ModuleType:
    """Import the extension `_<name>` of this package with its own libraries' symbols ahead of the process's.

    Raises:
        ImportError: the extension was not built (grpc++ was missing at install) or does not load.
    """
    module = f"{__name__}._{name}"
    deepbind = getattr(os, "RTLD_DEEPBIND", 0)
    if not deepbind:  # not glibc: no TensorFlow build with a grpc++ copy to clash with either
        return importlib.import_module(module)
    flags = sys.getdlopenflags()
    sys.setdlopenflags(os.RTLD_NOW | os.RTLD_LOCAL | deepbind)
    try:
        return importlib.import_module(module)
    finally:
        sys.setdlopenflags(flags)
