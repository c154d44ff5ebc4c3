"""Loading the grpc++ extensions so that they use the system's grpc++, not another copy in the process.

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


def load_native(module: str) -> ModuleType:
    """Import the extension `module` with its own libraries' symbols ahead of the process's.

    Raises:
        ImportError: the extension was not built (grpc++ was missing at install) or does not load.
    """
    deepbind = getattr(os, "RTLD_DEEPBIND", 0)
    if not deepbind:  # not glibc: no TensorFlow build with a grpc++ copy to clash with either
        return importlib.import_module(module)
    flags = sys.getdlopenflags()
    sys.setdlopenflags(os.RTLD_NOW | os.RTLD_LOCAL | deepbind)
    try:
        return importlib.import_module(module)
    finally:
        sys.setdlopenflags(flags)
