"""The "Exact search against the index" section of docs/benchmarks.md, from bench/results/exact_search.json."""

from __future__ import annotations

HEADING = "## Exact search against the index"


def exact_search_section(result: dict) -> list[str]:
    """Markdown lines: retrieval cost by catalog size, the ceiling and served throughput, Annoy against exact."""
    by_size = result["by_size"]
    served = result["served"]
    annoy, exact = served["annoy"], served["exact"]
    concurrencies = list(annoy["load"])
    lines = [
        HEADING,
        "",
        "```sh",
        f".venv/bin/python bench/exact_search.py --rounds {result['rounds']} --seconds {result['seconds']:g}",
        "```",
        "",
        "`retrieval.exact_search_max_items` searches a catalog of at most that many live items exactly (one "
        "matrix product per batch, a partial sort per query) instead of through Annoy. Retrieval alone, in "
        "process (`CatalogView.retrieve`, 100 candidates per query, real user-tower queries; Annoy with 32 trees, "
        "the committed `search_k`, 2 lookup threads as in the server): the demo model's 20,000 item embeddings, "
        "and larger catalogs made of them plus noise. CPU is every thread's, per query. "
        f"{result['machine']}.",
        "",
        "| items | batch | exact ms per batch | exact CPU µs per query | Annoy ms per batch | Annoy CPU µs per query "
        "| Annoy recall@100 |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {row['items']:,} | {row['batch']} | {row['exact_ms_per_batch']:.2f} | "
            f"{row['exact_cpu_us_per_query']:.0f} | {row['annoy_ms_per_batch']:.2f} | "
            f"{row['annoy_cpu_us_per_query']:.0f} | {row['annoy_recall_at_100']:.3f} |"
            for row in by_size
        ),
        "",
        f"The demo model served both ways (`exact_search_max_items: {result['exact_search_max_items']:,}` against "
        f"the committed config), {result['rounds']} interleaved rounds, medians; the pipeline ceiling "
        "(`bench/pipeline_ceiling.py`, its own process) in the same rounds; Recommend through `recserve loadtest`, "
        "the load generator on the same cores.",
        "",
        "| | committed (Annoy) | exact | exact / Annoy |",
        "| --- | ---: | ---: | ---: |",
    ]
    for batch in annoy["ceiling"]:
        a, e = annoy["ceiling"][batch], exact["ceiling"][batch]
        lines.append(f"| ceiling at batch {batch}, rows/s | {a:,.0f} | {e:,.0f} | {e / a:.2f}× |")
    for c in concurrencies:
        a, e = annoy["load"][c], exact["load"][c]
        lines += [
            f"| Recommend c={c}, req/s | {a['rps']:,.0f} | {e['rps']:,.0f} | {e['rps'] / a['rps']:.2f}× |",
            f"| Recommend c={c}, p50 / p99 ms | {a['p50_ms']:.1f} / {a['p99_ms']:.1f} "
            f"| {e['p50_ms']:.1f} / {e['p99_ms']:.1f} | |",
            f"| Recommend c={c}, server CPU µs per request | {a['cpu_us_per_request']:.0f} "
            f"| {e['cpu_us_per_request']:.0f} | {e['cpu_us_per_request'] / a['cpu_us_per_request']:.2f}× |",
        ]
    return [*lines, "", *_findings(by_size, annoy, exact), ""]


def _findings(by_size: list[dict], annoy: dict, exact: dict) -> list[str]:
    """Bullets: where exact search stops being cheaper, and what it serves at the demo size."""
    batch = max(row["batch"] for row in by_size)
    rows = [row for row in by_size if row["batch"] == batch]
    cheaper = [row["items"] for row in rows if row["exact_cpu_us_per_query"] < row["annoy_cpu_us_per_query"]]
    dearer = [row["items"] for row in rows if row["exact_cpu_us_per_query"] >= row["annoy_cpu_us_per_query"]]
    smallest = rows[0]
    crossover = (
        f"cheaper than Annoy up to {max(cheaper):,} items and dearer from {min(dearer):,}"
        if cheaper and dearer
        else ("cheaper at every size measured" if cheaper else "dearer at every size measured")
    )
    served = [f"{exact['load'][c]['rps'] / annoy['load'][c]['rps']:.2f}× at c={c}" for c in annoy["load"]]
    return [
        f"- In batches of {batch}, exact search costs {smallest['exact_cpu_us_per_query']:.0f} µs of CPU per query "
        f"at {smallest['items']:,} items against Annoy's {smallest['annoy_cpu_us_per_query']:.0f} (recall@100 "
        f"{smallest['annoy_recall_at_100']:.3f}; exact search's is 1 by definition). Its cost grows with the "
        f"catalog, Annoy's with `search_k`: exact is {crossover}, so set the limit below that point.",
        f"- Served, the demo model's throughput with exact search is {', '.join(served)} the committed config's.",
    ]
