"""recserve against Triton with its dynamic batcher, on the same pipeline, through the same client.

The peer is what a user choosing a server would run: Triton Inference Server (PyTriton 0.7, which bundles
tritonserver 2.51) with its dynamic batcher (max batch 64) in front of recserve's own BatchPipeline on the
same model version (bench/pytriton_server.py), in the configurations a Triton user would try: queue delay 0
or 2 ms, 1 or 2 model instances. recserve runs as `recserve serve` with its committed config. Before
measuring, both answer the same users through ModelInfer and must return the same items.

Triton's perf_analyzer drives every server with the same requests (ModelInfer on `recommender`, `user_id`
and `k` = 10 for 2,000 known users, `-b 1 --async` closed loop) at each concurrency. Rounds interleave:
every server once per concurrency per round, the order reversed every other round; cells are medians over
rounds. CPU is the user + system time of each server's whole process tree (tritonserver and its Python
backend stubs under PyTriton's process) during the measurement.

Two virtualenvs besides the main one (`make bench-peers` makes both): `.venv-perf` for perf_analyzer (see
bench/perf_analyzer.py) and `.venv-peers` for PyTriton (nvidia-pytriton 0.7 needs numpy < 2), with recserve
installed in it too:

    python3 -m venv .venv-peers && .venv-peers/bin/pip install -r bench/requirements-peers.txt -e .
    .venv/bin/python bench/peers.py [--seconds 6] [--rounds 3] [--concurrency 1 16 64 128]
    .venv/bin/python bench/peers.py --smoke    # one short round: do both servers and perf_analyzer work?
"""

from __future__ import annotations

# isort: off
from common import DEFAULT_REPOSITORY, REPO_ROOT, machine_note, median, write_result  # sets thread limits

# isort: on

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from perf_analyzer import MODEL, PERF_VENV, K, perf_analyzer_command, run_perf_analyzer, write_inputs
from process_tree import tree_cpu_seconds
from server_load import start_server

from recserve.inference import grpc_service_pb2 as kpb
from recserve.inference import grpc_service_pb2_grpc as kpb_grpc
from recserve.server.kserve.tensors import deserialize_bytes

PEERS_VENV = REPO_ROOT / ".venv-peers"
PYTRITON_SERVER = REPO_ROOT / "bench" / "pytriton_server.py"
RECSERVE = "recserve"
PYTRITON_CONFIGS = ((1, 0), (2, 0), (1, 2000), (2, 2000))  # (instances, max queue delay in microseconds)
CHECKED_USERS = 200
PERF_ANALYZER_OPTIONS = ("--async", "-b", "1")  # one inference per request, one thread for all in flight


@dataclass
class Peer:
    """A server under test: where to send ModelInfer, whose CPU counts, how to stop it."""

    name: str
    address: str
    pid: int
    stop: Callable[[], None]


def free_ports(count: int) -> int:
    """A port p such that p .. p+count-1 are all free now (PyTriton takes gRPC, HTTP and metrics ports)."""
    for _ in range(100):
        base = random.randint(20000, 60000)
        try:
            sockets = [socket.create_server(("127.0.0.1", base + n)) for n in range(count)]
        except OSError:
            continue
        for each in sockets:
            each.close()
        return base
    raise RuntimeError("no free ports")


def start_pytriton(venv: Path, repository: Path, instances: int, delay_us: int, workdir: Path) -> Peer:
    """bench/pytriton_server.py in `venv`, once Triton reports the model ready."""
    python = venv / "bin" / "python"
    if not python.is_file():
        sys.exit(f"no {python}: set it up as this script's docstring says (or run `make bench-peers`)")
    libdir = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    env = dict(
        os.environ, LD_LIBRARY_PATH=":".join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))
    )
    port = free_ports(3)
    name = f"PyTriton, {instances} instance{'s' if instances > 1 else ''}, delay {delay_us / 1000:g} ms"
    log = workdir / f"pytriton-{instances}-{delay_us}.log"
    command = [
        str(python), str(PYTRITON_SERVER), "--model-repository", str(repository), "--grpc-port", str(port),
        "--instances", str(instances), "--max-queue-delay-us", str(delay_us),
    ]  # fmt: skip
    with log.open("w") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    deadline = time.monotonic() + 300
    while "READY" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{name} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)

    def stop() -> None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)

    return Peer(name, f"127.0.0.1:{port}", process.pid, stop)


def start_recserve(repository: Path, workdir: Path) -> Peer:
    """`recserve serve` with the committed config."""
    server = start_server(repository, [], workdir)
    return Peer(RECSERVE, server.address, server.process.pid, server.stop)


def top_items(address: str, users: list[str]) -> list[list[str]]:
    """Each user's top K through ModelInfer, one call per user (as perf_analyzer sends them).

    recserve's own KServe stubs, not tritonclient's: both define the `inference` protobuf package, and one
    process can hold only one of them.
    """
    tensor = kpb.ModelInferRequest.InferInputTensor
    answers = []
    with grpc.insecure_channel(address) as channel:
        stub = kpb_grpc.GRPCInferenceServiceStub(channel)
        for user in users:
            request = kpb.ModelInferRequest(
                model_name=MODEL,
                inputs=[
                    tensor(name="user_id", datatype="BYTES", shape=[1, 1],
                           contents=kpb.InferTensorContents(bytes_contents=[user.encode()])),
                    tensor(name="k", datatype="INT32", shape=[1, 1], contents=kpb.InferTensorContents(int_contents=[K])),
                ],
                outputs=[kpb.ModelInferRequest.InferRequestedOutputTensor(name="item_ids")],
            )  # fmt: skip
            reply = stub.ModelInfer(request, timeout=30)
            if reply.raw_output_contents:
                items = deserialize_bytes("item_ids", reply.raw_output_contents[0])
            else:
                items = list(reply.outputs[0].contents.bytes_contents)
            answers.append([item.decode() for item in items])
    return answers


def inference_count(address: str) -> int:
    """The server's own count of `recommender` inferences so far (ModelStatistics, which both serve)."""
    with grpc.insecure_channel(address) as channel:
        reply = kpb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
            kpb.ModelStatisticsRequest(name=MODEL), timeout=30
        )
    return sum(stats.inference_count for stats in reply.model_stats)


def check_same_answers(peers: list[Peer], users: list[str]) -> dict[str, float]:
    """Share of users for whom each peer's top K is recserve's, in the same order."""
    reference = top_items(peers[0].address, users)
    agreement = {}
    for peer in peers[1:]:
        theirs = top_items(peer.address, users)
        agreement[peer.name] = sum(a == b for a, b in zip(reference, theirs, strict=True)) / len(users)
    return agreement


def measure_cell(
    command: tuple[list[str], dict[str, str]],
    peers: list[Peer],
    peer: Peer,
    data: Path,
    concurrency: int,
    seconds: float,
) -> dict:
    """One perf_analyzer measurement of one server, with the CPU its process tree used meanwhile (and the
    idle others': they all run for the whole benchmark, so what they take while idle is shown)."""
    others = [other for other in peers if other is not peer]
    count_before = inference_count(peer.address)
    cpu_before, idle_before = tree_cpu_seconds(peer.pid), sum(tree_cpu_seconds(o.pid) for o in others)
    started = time.monotonic()
    cell = run_perf_analyzer(command, peer.address, data, concurrency, seconds, PERF_ANALYZER_OPTIONS)
    wall = time.monotonic() - started
    cpu = tree_cpu_seconds(peer.pid) - cpu_before
    idle = sum(tree_cpu_seconds(o.pid) for o in others) - idle_before
    inferences = inference_count(peer.address) - count_before
    cell.pop("output")
    cell["server_cores"] = cpu / wall
    cell["cpu_ms_per_inference"] = cpu * 1000 / max(inferences, 1)
    cell["idle_servers_cores"] = idle / wall
    return {"server": peer.name, "concurrency": concurrency, **cell}


def main() -> None:
    """Start every server, check their answers, measure in interleaved rounds; bench/results/peers.json."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--result", default="peers", help="name of the result file (bench/results/)")
    parser.add_argument("--perf-venv", type=Path, default=PERF_VENV)
    parser.add_argument("--peers-venv", type=Path, default=PEERS_VENV)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 128])
    parser.add_argument("--smoke", action="store_true", help="one 1.5 s round at c=1 and 16, one PyTriton")
    args = parser.parse_args()
    configs = PYTRITON_CONFIGS
    if args.smoke:
        args.seconds, args.rounds, args.concurrency, configs = 1.5, 1, [1, 16], PYTRITON_CONFIGS[:1]
    command = perf_analyzer_command(args.perf_venv)
    workdir = Path(tempfile.mkdtemp(prefix="recserve-peers-"))
    perf_data, _ = write_inputs(args.model_repository, workdir)
    users = [row["user_id"][0] for row in json.loads(perf_data.read_text())["data"][:CHECKED_USERS]]
    peers: list[Peer] = []
    try:
        peers.append(start_recserve(args.model_repository, workdir))
        for instances, delay_us in configs:
            peers.append(start_pytriton(args.peers_venv, args.model_repository, instances, delay_us, workdir))
        agreement = check_same_answers(peers, users)
        print(f"same top {K} as recserve: {agreement}", file=sys.stderr)
        for peer in peers:
            run_perf_analyzer(command, peer.address, perf_data, 4, 1.5)  # warm connections and code paths
        cells: list[dict] = []
        for round_number in range(args.rounds):
            order = peers if round_number % 2 == 0 else peers[::-1]
            for concurrency in args.concurrency:
                for peer in order:
                    cells.append(measure_cell(command, peers, peer, perf_data, concurrency, args.seconds))
                    print(json.dumps(cells[-1]), file=sys.stderr)
    finally:
        for peer in peers:
            peer.stop()
    rows = medians(cells)
    print_table(rows)
    if not args.smoke:
        write_result(
            args.result,
            {
                "machine": machine_note(),
                "seconds": args.seconds,
                "rounds": args.rounds,
                "k": K,
                "same_answers": agreement,
                "rows": rows,
                "cells": cells,
            },
        )


def medians(cells: list[dict]) -> list[dict]:
    """One row per (server, concurrency): the median of every figure over the rounds."""
    keys = sorted(
        {(c["server"], c["concurrency"]) for c in cells}, key=lambda key: (key[1], key[0] != RECSERVE, key[0])
    )
    rows = []
    for server, concurrency in keys:
        runs = [c for c in cells if c["server"] == server and c["concurrency"] == concurrency]
        numeric = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and k != "concurrency"]
        rows.append(
            {
                "server": server,
                "concurrency": concurrency,
                **{k: median([r[k] for r in runs]) for k in numeric},
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    """Markdown table of the medians."""
    print("| server | concurrency | infer/s | p50 ms | p99 ms | server cores | CPU ms per inference |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['server']} | {r['concurrency']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r['server_cores']:.2f} | {r['cpu_ms_per_inference']:.2f} |"
        )


if __name__ == "__main__":
    main()
