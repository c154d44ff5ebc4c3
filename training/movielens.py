"""The MovieLens reader: ratings as implicit feedback, genres as item tags.

Three layouts are understood, each a ratings file with an optional movie file beside it:
`ratings.csv` + `movies.csv` (ml-latest, ml-25m, ...), `ratings.dat` + `movies.dat` (ml-1m) and
`u.data` + `u.item` (ml-100k).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from itertools import islice
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
# Ratings lines parsed at a time (~250 MB of Python strings at most).
CHUNK_LINES = 1_000_000


class TrainingDataError(ValueError):
    """A ratings file that cannot be trained on (malformed, or too little in it); the message says why."""


MIN_INTERACTIONS = 100
MIN_USERS = 2
MIN_ITEMS = 10


def check_trainable(interactions: Interactions) -> None:
    """Refuse interactions too few to train on: the DemoConfig minimums of users and items, and 100 events.

    Raises:
        TrainingDataError: naming what is too few.
    """
    have = (len(interactions), interactions.num_users, interactions.num_items)
    if have[0] < MIN_INTERACTIONS or have[1] < MIN_USERS or have[2] < MIN_ITEMS:
        raise TrainingDataError(
            f"{interactions.source}: {have[0]} ratings by {have[1]} users of {have[2]} items (each pair "
            f"once, min_rating applied); a build needs at least {MIN_INTERACTIONS} ratings, {MIN_USERS} "
            f"users and {MIN_ITEMS} items"
        )


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
        TrainingDataError: a line does not have four fields.
    """
    file, separator, header_lines = _ratings_file(Path(path))
    user_vocabulary, item_vocabulary = _Vocabulary(), _Vocabulary()
    user_codes, item_codes, times = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for table in _ratings_tables(file, separator, header_lines):
        if min_rating is not None:
            table = table[table[:, 2].astype(np.float64) >= min_rating]
        user_codes.append(user_vocabulary.codes(table[:, 0]))
        item_codes.append(item_vocabulary.codes(table[:, 1]))
        times.append(table[:, 3].astype(np.float64).astype(np.int64))
    user_ids, users = user_vocabulary.ordered(np.concatenate(user_codes))
    item_ids, items = item_vocabulary.ordered(np.concatenate(item_codes))
    users, items, timestamps = first_occurrences(users, items, np.concatenate(times), len(item_ids))
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


def _ratings_tables(file: Path, separator: str, header_lines: int) -> Iterator[np.ndarray]:
    """The ratings as str tables [n, 4] of at most `CHUNK_LINES` rows.

    A file of tens of millions of lines never lives in memory as Python strings all at once.
    """
    with file.open(encoding="latin-1") as lines:
        for _ in range(header_lines):
            next(lines, None)
        number = header_lines
        while chunk := list(islice(lines, CHUNK_LINES)):
            fields = []
            for line in chunk:
                number += 1
                if not line.strip():
                    continue
                row = line.rstrip("\r\n").split(separator)
                if len(row) < 4:
                    raise TrainingDataError(
                        f"{file}:{number}: expected user, item, rating, timestamp on every line"
                    )
                fields.append(row[:4])
            yield np.array(fields, dtype=str).reshape(-1, 4)


class _Vocabulary:
    """Distinct ids in the order first seen, built one chunk at a time; `ordered` sorts them at the end."""

    def __init__(self) -> None:
        self._code_of: dict[str, int] = {}

    def codes(self, values: np.ndarray) -> np.ndarray:
        """Each value's code (its first-seen position), int64."""
        distinct, rows = np.unique(values, return_inverse=True)
        code_of = self._code_of
        distinct_codes = np.array(
            [code_of.setdefault(str(v), len(code_of)) for v in distinct], dtype=np.int64
        )
        return distinct_codes[rows.reshape(-1)]

    def ordered(self, codes: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
        """The distinct ids sorted (numeric ones in numeric order), and each code's row in them."""
        ids = list(self._code_of)
        numeric = all(value.isdigit() for value in ids)
        order = sorted(range(len(ids)), key=(lambda c: int(ids[c])) if numeric else ids.__getitem__)
        rank = np.empty(len(ids), dtype=np.int64)
        rank[np.asarray(order, dtype=np.int64)] = np.arange(len(ids))
        return tuple(ids[c] for c in order), rank[codes]


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


def write_movielens(interactions: Interactions, directory: Path) -> Path:
    """Write `interactions` as a MovieLens `ratings.csv` and `movies.csv` in `directory`; the ratings path.

    Users and items get the numeric ids of MovieLens (row + 1), tags become genres, and every interaction
    is a 5-star rating: the file of a catalog of any size, in the format the reader takes from real
    MovieLens releases.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ratings = directory / "ratings.csv"
    with ratings.open("w", encoding="utf-8") as file:
        file.write("userId,movieId,rating,timestamp\n")
        for start in range(0, len(interactions), CHUNK_LINES):
            rows = slice(start, start + CHUNK_LINES)
            users = (interactions.user_rows[rows].astype(np.int64) + 1).tolist()
            items = (interactions.item_rows[rows].astype(np.int64) + 1).tolist()
            times = interactions.timestamps[rows].tolist()
            file.writelines(f"{u},{i},5.0,{t}\n" for u, i, t in zip(users, items, times, strict=True))
    with (directory / "movies.csv").open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(("movieId", "title", "genres"))
        for row, tags in enumerate(interactions.item_tags):
            writer.writerow((row + 1, f"Item {row + 1}", "|".join(tags) or "(no genres listed)"))
    return ratings
