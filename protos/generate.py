"""Generate the Python protobuf and gRPC code for every .proto under protos/.

Run from anywhere: `python protos/generate.py` writes the code beside the .proto files; `--out DIR`
writes it elsewhere (the drift test compares the two). The include root is protos/, so generated imports
read `from recserve.v1 import ...` without any patching.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent


def proto_files() -> list[Path]:
    """All .proto files under protos/, relative to it, in a stable order."""
    return sorted(p.relative_to(PROTO_ROOT) for p in PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> None:
    """Run protoc for every .proto file, writing *_pb2.py, *_pb2.pyi and *_pb2_grpc.py into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed; see the messages above")


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=PROTO_ROOT, help="output directory (default: protos/)")
    generate(parser.parse_args().out)
    sys.stderr.write("generated protobuf code for: " + ", ".join(map(str, proto_files())) + "\n")


if __name__ == "__main__":
    main()
