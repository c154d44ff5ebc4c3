"""Generate the Python protobuf and gRPC code for every .proto under protos/.

Run from anywhere: `python protos/generate.py` writes the code beside the .proto files; `--out DIR`
writes it elsewhere (the drift test compares the two). The include root is protos/, so generated imports
read `from recserve.v1 import ...` without any patching.

It also writes `recserve/descriptors.binpb`: the files' descriptors with their comments (source info),
which the generated code leaves out, so server reflection can show them (`grpcurl describe`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
DESCRIPTORS = Path("recserve") / "descriptors.binpb"


def proto_files() -> list[Path]:
    """All .proto files under protos/, relative to it, in a stable order."""
    return sorted(p.relative_to(PROTO_ROOT) for p in PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> None:
    """Run protoc for every .proto file: *_pb2.py, *_pb2.pyi, *_pb2_grpc.py and the descriptor set."""
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--descriptor_set_out={out_dir / DESCRIPTORS}",
        "--include_source_info",
        *[str(p) for p in proto_files()],
    ]
    (out_dir / DESCRIPTORS).parent.mkdir(parents=True, exist_ok=True)
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
