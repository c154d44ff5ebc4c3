"""The CLI's live-state commands: record events, read or forget a user's history, change the catalog.

Registered by `recserve.client.cli` with its common options (--target, --timeout, --json). The server must
have the services enabled (events_enabled, catalog_enabled); otherwise they answer PERMISSION_DENIED.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from recserve.client import formatting
from recserve.client.client import RecommenderClient
from recserve.client.live import EVENT_TYPES, Event, Item

UPSERT_BATCH_SIZE = 1000
"""Items per UpsertItems call from `upsert --file`: the server's default `state.max_items_per_call`."""

Command = Callable[[argparse.Namespace, RecommenderClient, Console], int]
AddCommand = Callable[[argparse._SubParsersAction, str, Command, str], argparse.ArgumentParser]


def add_live_commands(subparsers: argparse._SubParsersAction, add_command: AddCommand) -> None:
    """Register record, history, forget, upsert, delete-items and item."""
    record = add_command(subparsers, "record", _record, "Record what a user did (one event per item).")
    record.add_argument("--user", required=True, help="user id")
    record.add_argument("--items", nargs="+", required=True, metavar="ITEM", help="items, oldest first")
    record.add_argument("--type", default="VIEW", choices=EVENT_TYPES, help="event type (default VIEW)")

    history = add_command(subparsers, "history", _history, "A user's stored events, oldest first.")
    history.add_argument("--user", required=True, help="user id")
    forget = add_command(subparsers, "forget", _forget, "Delete everything stored about a user.")
    forget.add_argument("--user", required=True, help="user id")

    upsert = add_command(subparsers, "upsert", _upsert, "Add items or give them new tags.")
    upsert.add_argument("--item", help="item id (with --tags)")
    upsert.add_argument("--tags", nargs="*", default=[], metavar="TAG", help="the item's tags")
    upsert.add_argument(
        "--file",
        type=Path,
        help='JSON lines {"item_id": ..., "tags": [...]}, e.g. a version\'s cold_start_items.jsonl',
    )
    upsert.add_argument(
        "--batch-size",
        type=_positive_count,
        default=UPSERT_BATCH_SIZE,
        help=f"items per UpsertItems call (default {UPSERT_BATCH_SIZE}, the server's default "
        "state.max_items_per_call); a failed call leaves the calls before it applied, and upserting again "
        "is harmless",
    )
    delete = add_command(subparsers, "delete-items", _delete, "Remove items from the catalog.")
    delete.add_argument("--items", nargs="+", required=True, metavar="ITEM", help="item ids")
    item = add_command(subparsers, "item", _item, "One item as the server has it.")
    item.add_argument("--item", required=True, help="item id")


def _record(args: argparse.Namespace, client: RecommenderClient, console: Console) -> int:
    recorded = client.record_events([Event(args.user, item, args.type) for item in args.items])
    _report(args, console, {"accepted": recorded.accepted, "unknown_item_ids": recorded.unknown_item_ids})
    return 0


def _history(args: argparse.Namespace, client: RecommenderClient, console: Console) -> int:
    events = client.user_history(args.user)
    rows = [{"item_id": e.item_id, "type": e.type, "time_s": e.time_s} for e in events]
    _report(args, console, {"user_id": args.user, "events": rows})
    return 0


def _forget(args: argparse.Namespace, client: RecommenderClient, console: Console) -> int:
    _report(args, console, {"user_id": args.user, "deleted": client.delete_user_history(args.user)})
    return 0


def _upsert(args: argparse.Namespace, client: RecommenderClient, console: Console) -> int:
    items = [Item(args.item, tuple(args.tags))] if args.item else []
    if args.file:
        items += [Item(row["item_id"], tuple(row.get("tags", ()))) for row in _json_lines(args.file)]
    if not items:
        raise SystemExit("error: give --item (and --tags) or --file")
    upserted = 0
    for start in range(0, len(items), args.batch_size):
        upserted += client.upsert_items(items[start : start + args.batch_size])
    _report(args, console, {"upserted": upserted})
    return 0


def _delete(args: argparse.Namespace, client: RecommenderClient, console: Console) -> int:
    deleted = client.delete_items(args.items)
    _report(args, console, {"deleted": deleted.deleted, "unknown_item_ids": deleted.unknown_item_ids})
    return 0


def _item(args: argparse.Namespace, client: RecommenderClient, console: Console) -> int:
    found = client.get_item(args.item)
    _report(args, console, {"item_id": found.item_id, "tags": list(found.tags)})
    return 0


def _positive_count(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {value}")
    return count


def _json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _report(args: argparse.Namespace, console: Console, answer: formatting.JsonObject) -> None:
    """JSON with --json, else one `key: value` line per field."""
    if args.json:
        formatting.write_json(answer)
        return
    for key, value in answer.items():
        console.print(f"{key}: {value}", markup=False, highlight=False)
