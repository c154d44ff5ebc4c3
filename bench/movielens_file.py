"""A MovieLens-format data set of any size: the demo data written as `ratings.csv` and `movies.csv`.

Real MovieLens releases stop at ~60k movies; this writes the generated demo interactions (numeric ids,
tags as genres) in ml-latest's layout, so that `recserve build-demo --ratings` can be measured at a million
items through the same reader a real release goes through:

    .venv/bin/python bench/movielens_file.py --num-users 1000000 --num-items 1000000 /data/ml-1m-items
    /usr/bin/time -v .venv/bin/recserve build-demo --ratings /data/ml-1m-items/ratings.csv \
        --model-repository /data/ml-repository --no-progress
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from recserve.training.demo_data import generate_demo
from recserve.training.movielens import write_movielens


def main() -> None:
    """Generate the demo data at the given size and write it as MovieLens files."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("directory", type=Path)
    parser.add_argument("--num-users", type=int, default=1_000_000)
    parser.add_argument("--num-items", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    started = time.monotonic()
    data = generate_demo(args.num_users, args.num_items, seed=args.seed)
    ratings = write_movielens(data, args.directory)
    size_mb = ratings.stat().st_size / 2**20
    print(
        f"{ratings}: {len(data):,} ratings of {data.num_users:,} users over {data.num_items:,} movies "
        f"({size_mb:,.0f} MB) in {time.monotonic() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
