"""The committed generated code must be exactly what `make proto` produces from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTOS = REPO_ROOT / "protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generated_files(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): path.read_text()
        for path in sorted(root.rglob("*.py*"))
        if path.name.endswith(GENERATED_SUFFIXES)
    }


def test_generated_code_matches_the_proto_files(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(PROTOS / "generate.py"), "--out", str(tmp_path)], check=True)
    fresh = generated_files(tmp_path)
    committed = generated_files(PROTOS)
    assert fresh, "protoc generated nothing"
    assert sorted(committed) == sorted(fresh), (
        "generated files differ from the committed set: run `make proto`"
    )
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"generated code is stale for {stale}: run `make proto` and commit the result"
    descriptors = "recserve/descriptors.binpb"  # the protos with comments, for server reflection
    assert (tmp_path / descriptors).read_bytes() == (PROTOS / descriptors).read_bytes(), (
        f"{descriptors} is stale: run `make proto` and commit the result"
    )


def test_every_proto_file_has_generated_code() -> None:
    for proto in PROTOS.rglob("*.proto"):
        assert proto.with_name(proto.stem + "_pb2.py").exists(), f"{proto} has no generated code"


def test_generated_package_is_importable_from_both_sides() -> None:
    from recserve.v1 import recommender_pb2, recommender_pb2_grpc

    assert recommender_pb2.DESCRIPTOR.package == "recserve.v1"
    assert hasattr(recommender_pb2_grpc, "RecommenderStub")
    assert "Recommend" in recommender_pb2.DESCRIPTOR.services_by_name["Recommender"].methods_by_name
