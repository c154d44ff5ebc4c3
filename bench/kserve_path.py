"""ModelInfer on `recommender` against Recommend, through the same load generator, on the same server.

Triton users drive recserve through perf_analyzer and tritonclient (KServe v2 ModelInfer); recserve's own
clients call Recommend. Both ask the same thing (one user, k = 10), so the protocol should cost nothing:
this measures ModelInfer's throughput as a share of Recommend's, with `recserve loadtest` sending both
(ModelInfer with the user id as typed BYTES contents, as ghz-style JSON), in interleaved rounds (the order
reversed every other round), medians. Per request it also reports the server's CPU by thread group (from
/proc) and the load generator's own CPU (it shares the cores; its start-up is included).

    .venv/bin/python bench/kserve_path.py [--seconds 5] [--rounds 7] [--concurrency 64 128]
"""

from __future__ import annotations

# isort: off
from common import DEFAULT_REPOSITORY, machine_note, median, write_result  # first: sets thread limits

# isort: on

import argparse
import base64
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from perf_analyzer import MODEL, K, write_inputs
from server_load import LOADTEST, ServerProcess, start_server

CALLS = {
    "Recommend": "recserve.v1.Recommender.Recommend",
    "ModelInfer": "inference.GRPCInferenceService.ModelInfer",
}


def infer_requests(recommend_file: Path) -> Path:
    """The Recommend requests of `recommend_file` as ModelInfer requests (proto JSON: bytes in base64)."""
    requests = [
        {
            "model_name": MODEL,
            "inputs": [
                {"name": "user_id", "datatype": "BYTES", "shape": [1, 1],
                 "contents": {"bytes_contents": [base64.b64encode(r["user_id"].encode()).decode()]}},
                {"name": "k", "datatype": "INT32", "shape": [1, 1], "contents": {"int_contents": [r["k"]]}},
            ],
        }
        for r in json.loads(recommend_file.read_text())
    ]  # fmt: skip
    path = recommend_file.with_name("infer_requests.json")
    path.write_text(json.dumps(requests))
    return path


def run(server: ServerProcess, call: str, data: Path, concurrency: int, seconds: float) -> dict:
    """One closed-loop run: throughput, p99, and CPU per request (server by thread group, load generator)."""
    groups_before, count_before = server.cpu_by_thread_group(), server.statistics().inference_count
    client_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = [
        *LOADTEST, "--insecure", "--call", call, "-D", str(data), "-c", str(concurrency),
        "--connections", str(min(concurrency, 4)), "-z", f"{seconds}s", "-O", "json", server.address,
    ]  # fmt: skip
    report = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    client_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    groups_after = server.cpu_by_thread_group()
    served = max(server.statistics().inference_count - count_before, 1)
    client_s = (client_after.ru_utime + client_after.ru_stime) - (
        client_before.ru_utime + client_before.ru_stime
    )
    ok = report["statusCodeDistribution"].get("OK", 0)
    return {
        "rps": ok / (report["total"] / 1e9),
        "p99_ms": next((p["latency"] / 1e6 for p in report["latencyDistribution"] if p["percentage"] == 99), 0.0),
        "failed": sum(n for status, n in report["statusCodeDistribution"].items() if status not in ("OK", "Canceled")),
        "client_us_per_request": client_s * 1e6 / max(ok, 1),
        **{f"{group}_us_per_request": (groups_after[group] - groups_before.get(group, 0.0)) * 1e6 / served
           for group in groups_after},
    }  # fmt: skip


def main() -> None:
    """Interleaved rounds per concurrency; medians; bench/results/kserve_path.json."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--result", default="kserve_path", help="name of the result file (bench/results/)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 128])
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="recserve-kserve-path-"))
    _, recommend_data = write_inputs(args.model_repository, workdir)
    data = {"Recommend": recommend_data, "ModelInfer": infer_requests(recommend_data)}
    server = start_server(args.model_repository, [], workdir)
    rows = []
    try:
        for name, call in CALLS.items():
            run(server, call, data[name], 8, 2)  # warm both paths
        for concurrency in args.concurrency:
            cells: dict[str, list[dict]] = {name: [] for name in CALLS}
            for round_number in range(args.rounds):
                names = list(CALLS) if round_number % 2 == 0 else list(CALLS)[::-1]
                for name in names:
                    cells[name].append(run(server, CALLS[name], data[name], concurrency, args.seconds))
                    time.sleep(0.5)
            row: dict = {"concurrency": concurrency}
            for name, runs in cells.items():
                row[name] = {key: median([r[key] for r in runs]) for key in runs[0]}
            row["ratio"] = row["ModelInfer"]["rps"] / row["Recommend"]["rps"]
            row["ratios"] = [
                i["rps"] / r["rps"] for i, r in zip(cells["ModelInfer"], cells["Recommend"], strict=True)
            ]
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    finally:
        server.stop()
    for row in rows:
        print(
            f"c={row['concurrency']}: ModelInfer {row['ModelInfer']['rps']:.0f}/s, Recommend "
            f"{row['Recommend']['rps']:.0f}/s: {row['ratio']:.2f}x (rounds {min(row['ratios']):.2f}-{max(row['ratios']):.2f})"
        )
    write_result(
        args.result,
        {"machine": machine_note(), "seconds": args.seconds, "rounds": args.rounds, "k": K, "rows": rows},
    )


if __name__ == "__main__":
    main()
