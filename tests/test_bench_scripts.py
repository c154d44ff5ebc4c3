"""The benchmarks still run against today's code: each one's smallest run, on the tiny test model.

Figures are not checked (benchmarks measure; tests do not time): only that a script runs to the end and
reports what it should. A benchmark that no longer runs was found, before this, only by the next person
who needed its figures.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_bench(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stderr[-3000:]}"
    return result.stdout


# Runs in its own virtualenv (PyTriton): not importable here.
OTHER_VENV = {"pytriton_server"}


def test_every_benchmark_imports() -> None:
    modules = sorted(p.stem for p in (REPO_ROOT / "bench").glob("*.py") if p.stem not in OTHER_VENV)
    code = f"import sys; sys.path.insert(0, 'bench'); import {', '.join(modules)}"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_pipeline_ceiling_runs(model_repository: Path) -> None:
    out = run_bench(
        "pipeline_ceiling.py", "--model-repository", str(model_repository), "--seconds", "0.05",
        "--batch-sizes", "1", "4", "--json",
    )  # fmt: skip
    rows = json.loads(out.strip().splitlines()[-1])
    assert [row["batch_size"] for row in rows] == [1, 4]
    assert all(row["rows_per_s"] > 0 and row["ranker_ms"] > 0 for row in rows)


def test_the_peer_report_renders_a_result() -> None:
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    from peers_report import peers_section

    def row(server: str, concurrency: int, rps: float) -> dict:
        latency = {"p50_ms": 1000 / rps, "p99_ms": 2000 / rps, "server_queue_ms": 0.1, "server_compute_ms": 1}
        return {"server": server, "concurrency": concurrency, "rps": rps, **latency,
                "server_cores": 1.0, "cpu_ms_per_inference": 1.0}  # fmt: skip

    result = {
        "machine": "2 cores", "seconds": 6, "rounds": 3, "k": 10,
        "same_answers": {"PyTriton, 1 instance, delay 0 ms": 1.0},
        "rows": [row("recserve", 16, 1500), row("PyTriton, 1 instance, delay 0 ms", 16, 500),
                 row("PyTriton, 2 instances, delay 0 ms", 16, 600)],
    }  # fmt: skip
    text = "\n".join(peers_section(result))
    assert "| 16 | 1,500 (0.7 / 1.3) | 600 (1.7 / 3.3), 2 instances, delay 0 ms | 2.50× |" in text
    assert "met** (lowest ratio 2.50× at c=16" in text


def test_the_workers_benchmark_runs(model_repository: Path) -> None:
    out = run_bench("workers.py", "--model-repository", str(model_repository), "--smoke")
    assert re.search(r"c=16: 1 worker \d+/s .* 2 workers \d+/s .*: [\d.]+x", out), out


def test_the_scale_benchmark_runs(model_repository: Path) -> None:
    out = run_bench("scale.py", "--size", f"2500={model_repository}", "--smoke")
    assert re.search(r"2,500 items: search_k \d+ \(recall@100 [\d.]+, [\d.]+ ms\), index \d+ MB", out), out


def test_the_movielens_file_is_written(tmp_path: Path) -> None:
    out = run_bench("movielens_file.py", "--num-users", "200", "--num-items", "500", str(tmp_path))
    assert re.search(r"ratings.csv: [\d,]+ ratings of 200 users over 500 movies", out), out
    assert (tmp_path / "movies.csv").read_text().startswith("movieId,title,genres\n1,Item 1,tag-")


def test_the_delta_benchmark_runs(model_repository: Path) -> None:
    out = run_bench(
        "delta_scale.py", "--model-repository", str(model_repository), "--deltas", "0", "300", "--smoke"
    )
    assert re.search(r"\| 300 \| [\d.]+ \| [\d.]+ \| [+-][\d.]+ \| [\d.]+ \|", out), out
    assert re.search(r"Rebuild over [\d,]+ rows \(\d+ trees\): [\d.]+ s in the background", out), out


def test_the_scale_report_renders_trees_and_delta() -> None:
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    from scale_report import delta_lines, trees_lines

    def point(n_trees: int, recall: float, ms: float) -> dict:
        return {"n_trees": n_trees, "search_k": 5000, "recall_at_100": recall, "ms_per_query": ms,
                "build_s": 40 * n_trees / 32}  # fmt: skip

    sweep_rows = [point(32, 0.91, 1.2), point(64, 0.93, 1.3)]
    sweep = {
        "machine": "2 cores",
        "items": 1_000_000,
        "queries": 500,
        "rows": sweep_rows,
        "choice": sweep_rows[0],
    }
    text = "\n".join(trees_lines(sweep))
    assert (
        "--n-trees 32 64 --search-k 5000" in text
        and "| 32 | 40 | 5,000 | 0.910 **(cheapest >= 0.9)** |" in text
    )

    def batch(ms: float, ann_ms: float) -> dict:
        return {
            "ms_per_batch": ms,
            "p99_ms_per_batch": 2 * ms,
            "ann_ms": ann_ms,
            "user_tower_ms": 1,
            "ranker_ms": 5,
        }

    delta = {
        "machine": "2 cores", "items": 1_000_000, "batch": 64, "search_k": 5000,
        "rows": [{"delta": 0, **batch(32, 20)}, {"delta": 5000, **batch(40, 28)}],
        "rebuild": {"rows": 1_005_000, "n_trees": 32, "build_s": 61.0, "open_and_swap_s": 0.001,
                    "before": batch(40, 28), "during": batch(50, 30), "after": batch(32, 20)},
    }  # fmt: skip
    text = "\n".join(delta_lines(delta))
    assert "| 5,000 | 40.0 (80.0) | 28.0 | +8.0 | 1,600 |" in text and "**61 s**" in text


def test_the_light_load_benchmark_runs(model_repository: Path) -> None:
    out = run_bench("light_load.py", "--model-repository", str(model_repository), "--smoke")
    assert re.search(r"server p50 [\d.]+ ms, pipeline batch 1 [\d.]+ ms: gap -?[\d.]+ ms \(target", out), out
    assert re.search(r"ranker: [\d.]+ ms in the server, [\d.]+ in process", out), out


def test_the_ceiling_share_benchmark_runs(model_repository: Path) -> None:
    out = run_bench("ceiling_share.py", "--model-repository", str(model_repository), "--smoke")
    assert re.search(r"server \d+ req/s, ceiling at batch 64 \d+ rows/s: share \d+%", out), out
    assert re.search(r"ann: [\d.]+ / [\d.]+", out) and re.search(r"event_loop: \d+", out), out


def test_the_exact_search_benchmark_runs(model_repository: Path) -> None:
    out = run_bench(
        "exact_search.py", "--model-repository", str(model_repository), "--sizes", "2000", "4000",
        "--retrieval-seconds", "0.05", "--ceiling-seconds", "0.05", "--rounds", "1", "--seconds", "0.5",
        "--concurrency", "4", "--result", "exact_search_test",
    )  # fmt: skip
    written = Path(out.strip().splitlines()[-1].split("results: ", 1)[1])
    result = json.loads(written.read_text())
    written.unlink()  # not the benchmark's own result file, which docs/benchmarks.md is rendered from
    assert [(row["items"], row["batch"]) for row in result["by_size"]] == [
        (2000, 1),
        (2000, 64),
        (4000, 1),
        (4000, 64),
    ]
    assert all(
        0 < row["annoy_recall_at_100"] <= 1 and row["exact_ms_per_batch"] > 0 for row in result["by_size"]
    )
    assert set(result["served"]) == {"annoy", "exact"}
    assert all(cell["load"]["4"]["rps"] > 0 for cell in result["served"].values())
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    from exact_search_report import exact_search_section

    section = exact_search_section(result)
    assert section[0] == "## Exact search against the index"
    assert any(line.startswith("| 4,000 | 64 |") for line in section)
    assert any("at c=4 the committed config's" in line for line in section)


def test_the_annoy_sweep_marks_the_configured_setting(model_repository: Path) -> None:
    run_bench(
        "annoy_sweep.py", "--model-repository", str(model_repository), "--queries", "50",
        "--n-trees", "8", "32", "--search-k", "500", "3000", "--result", "annoy_sweep_test",
    )  # fmt: skip
    written = REPO_ROOT / "bench" / "results" / "annoy_sweep_test.json"
    result = json.loads(written.read_text())
    written.unlink()  # not the benchmark's own result file, which docs/benchmarks.md is rendered from
    assert result["configured"] == {"n_trees": 32, "search_k": 3000}, "the committed config's setting"
    assert [(row["n_trees"], row["search_k"]) for row in result["rows"]] == [(8, 500), (8, 3000), (32, 500),
                                                                            (32, 3000)]  # fmt: skip
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    from report import annoy_sweep_section

    text = "\n".join(annoy_sweep_section(result))
    assert re.search(r"\| 32 \| 3000 \| [\d.]+ \*\*\(configured", text), text
    assert text.count("configured") == 1, text


def test_a_report_of_several_sections_replaces_each_in_place() -> None:
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    from report import replace_section, split_sections

    document = "# Page\n\n## Targets\n\nold\n\n## Server\n\nold table\n\n## Later\n\nkept\n"
    rendered = ["## Targets", "", "new", "", "## Server", "", "new table", ""]
    sections = split_sections(rendered)
    assert [section[0] for section in sections] == ["## Targets", "## Server"]
    for section in sections:
        document = replace_section(document, section)
    assert document == "# Page\n\n## Targets\n\nnew\n\n## Server\n\nnew table\n\n## Later\n\nkept\n"
