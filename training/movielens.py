"""The MovieLens reader: ratings as implicit feedback, genres as item tags.

Three layouts are understood, each a ratings file with an optional movie file beside it:
`ratings.csv` + `movies.csv` (ml-latest, ml-25m, ...), `ratings.dat` + `movies.dat` (ml-1m) and
`u.data` + `u.item` (ml-100k).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from recserve.training.data import Interactions, first_occurrences

RATINGS_FILES = (("ratings.csv", ",", 1), ("ratings.dat", "::", 0), ("u.data", "\t", 0))
MOVIE_FILE_BESIDE = {"ratings.csv": "movies.csv", "ratings.dat": "movies.dat", "u.data": "u.item"}
# u.item's last 19 columns are 0/1 flags of these genres, in this order.
ML_100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
# What the files say instead of a genre: no tag.
NO_GENRE = frozenset({"(no genres listed)", "unknown", ""})


def read_movielens(path: Path, min_rating: float | None = None) -> Interactions:
    """Read MovieLens ratings as implicit feedback, and the movies' genres as their tags.

    Args:
        path: `ratings.csv` (header `userId,movieId,rating,timestamp`), `ratings.dat` (`::`-separated) or
            `u.data` (tab-separated, no header), or a directory holding one of them.
        min_rating: keep only ratings at or above this; None keeps every rating as an interaction.

    Ids stay the strings of the file; numeric ids are ordered numerically. A repeated (user, item) pair
    keeps its earliest event. Genres come from the movie file beside the ratings (`movies.csv`,
    `movies.dat` or `u.item`); without one, or for a movie it does not list, an item has no tags. The
    tag vocabulary is the genres seen, sorted.

    Raises:
        FileNotFoundError: no ratings file at `path`.
        ValueError: a line does not have four fields.
    """
    file, separator, header_lines = _ratings_file(Path(path))
    lines = [line for line in file.read_text().splitlines()[header_lines:] if line.strip()]
    fields = [line.split(separator) for line in lines]
    if any(len(row) < 4 for row in fields):
        raise ValueError(f"{file}: expected user, item, rating, timestamp on every line")
    table = np.array([row[:4] for row in fields], dtype=str).reshape(-1, 4)
    if min_rating is not None:
        table = table[table[:, 2].astype(np.float64) >= min_rating]
    user_ids, users = _vocabulary(table[:, 0])
    item_ids, items = _vocabulary(table[:, 1])
    timestamps = table[:, 3].astype(np.float64).astype(np.int64)
    users, items, timestamps = first_occurrences(users, items, timestamps, len(item_ids))
    genres = read_genres(file)
    item_tags = tuple(genres.get(item_id, ()) for item_id in item_ids)
    return Interactions(
        user_ids,
        item_ids,
        users.astype(np.int32),
        items.astype(np.int32),
        timestamps,
        f"movielens:{file}",
        tag_ids=tuple(sorted({tag for tags in item_tags for tag in tags})),
        item_tags=item_tags,
    )


def _ratings_file(path: Path) -> tuple[Path, str, int]:
    """The ratings file at or under `path`, its field separator and header line count."""
    for name, separator, header_lines in RATINGS_FILES:
        if path.is_dir() and (path / name).is_file():
            return path / name, separator, header_lines
        if path.is_file() and path.name == name:
            return path, separator, header_lines
    if path.is_file():
        separator = "," if path.suffix == ".csv" else "\t"
        return path, separator, int(separator == ",")
    names = ", ".join(name for name, _, _ in RATINGS_FILES)
    raise FileNotFoundError(f"no MovieLens ratings file ({names}) at {path}")


def _vocabulary(values: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """Distinct ids (numeric ones in numeric order) and each value's row in them."""
    distinct, rows = np.unique(values, return_inverse=True)
    if all(value.isdigit() for value in distinct):
        order = np.argsort(distinct.astype(np.int64), kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        distinct, rows = distinct[order], rank[rows]
    return tuple(str(value) for value in distinct), rows.astype(np.int64)


def read_genres(ratings_file: Path) -> dict[str, tuple[str, ...]]:
    """Movie id -> its genres, from the movie file beside `ratings_file`; empty when there is none.

    The file of the ratings file's own layout is preferred, then any of the others.
    """
    preferred = MOVIE_FILE_BESIDE.get(ratings_file.name)
    names = [preferred, *(name for name in MOVIE_FILE_BESIDE.values() if name != preferred)]
    for name in filter(None, names):
        movie_file = ratings_file.parent / name
        if movie_file.is_file():
            rows = _GENRE_READERS[name](movie_file)
            return {movie: tuple(g for g in genres if g not in NO_GENRE) for movie, genres in rows}
    return {}


def _movies_csv(path: Path) -> list[tuple[str, list[str]]]:
    """`movieId,title,genres` with a header; titles may be quoted and hold commas; genres `A|B|C`."""
    with path.open(encoding="utf-8", newline="") as file:
        rows = list(csv.reader(file))[1:]
    return [(row[0], row[-1].split("|")) for row in rows if len(row) >= 3]


def _movies_dat(path: Path) -> list[tuple[str, list[str]]]:
    """ml-1m: `MovieID::Title::Genres`, latin-1."""
    fields = [line.split("::") for line in path.read_text(encoding="latin-1").splitlines()]
    return [(row[0], row[-1].split("|")) for row in fields if len(row) >= 3]


def _u_item(path: Path) -> list[tuple[str, list[str]]]:
    """ml-100k: `|`-separated, latin-1; the last 19 columns flag the genres of `ML_100K_GENRES`."""
    fields = [line.split("|") for line in path.read_text(encoding="latin-1").splitlines()]
    width = len(ML_100K_GENRES)
    return [
        (row[0], [genre for genre, flag in zip(ML_100K_GENRES, row[-width:], strict=True) if flag == "1"])
        for row in fields
        if len(row) > width
    ]


_GENRE_READERS = {"movies.csv": _movies_csv, "movies.dat": _movies_dat, "u.item": _u_item}
