"""The in-process state backend and its log: writes are visible at once and survive a restart."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from recserve.server.state.events import EventType, ItemDelete, ItemUpsert, UserEvent
from recserve.server.state.log import HEADER, CorruptLogError, StateDirInUseError
from recserve.server.state.memory import MemoryBackend, full_below


def backend(state_dir: Path, fsync: str = "everysec", compact_log_bytes: int = 1 << 20) -> MemoryBackend:
    return MemoryBackend(
        state_dir, fsync, max_history_events=5, max_context=50, compact_log_bytes=compact_log_bytes
    )


async def opened(
    state_dir: Path, **options: object
) -> tuple[MemoryBackend, dict[str, tuple[str, ...] | None]]:
    """The backend, open, and its catalog changes as item id -> tags (None: deleted)."""
    store = backend(state_dir, **options)  # type: ignore[arg-type]
    changes = await store.open()
    return store, {c.item_id: (c.tags if isinstance(c, ItemUpsert) else None) for c, _ in changes}


def views(user: str, *items: str, start_ms: int = 0) -> list[UserEvent]:
    return [UserEvent(user, item, EventType.VIEW, start_ms + n) for n, item in enumerate(items)]


async def test_events_are_visible_when_recorded(tmp_path: Path) -> None:
    store, _ = await opened(tmp_path)
    await store.record_events(views("u1", "a", "b"))
    assert store.profiles(["u1", "nobody"])[0].context == ("a", "b")
    assert store.profiles(["nobody"])[0].context == ()
    await store.record_events([UserEvent("u1", "a", EventType.DISLIKE, 10)])
    assert store.profiles(["u1"])[0].context == ("b",)
    await store.close()


@pytest.mark.parametrize("fsync", ["always", "everysec"])
async def test_a_restart_rebuilds_history_and_catalog_changes(tmp_path: Path, fsync: str) -> None:
    store, _ = await opened(tmp_path, fsync=fsync)
    await asyncio.gather(*(store.record_events(views(f"u{n}", "a", "b", start_ms=n)) for n in range(20)))
    await store.record_catalog_changes([ItemUpsert("new", ("t1", "t2")), ItemDelete("old")])
    history = await store.user_history("u3")
    await store.close()

    again, catalog = await opened(tmp_path, fsync=fsync)
    assert await again.user_history("u3") == history
    assert catalog == {"new": ("t1", "t2"), "old": None}
    await again.close()


async def test_history_keeps_the_latest_events(tmp_path: Path) -> None:
    store, _ = await opened(tmp_path)
    await store.record_events(views("u", *"abcdefg"))
    assert [e.item_id for e in await store.user_history("u")] == list("cdefg")
    await store.close()


async def test_forgetting_a_user_removes_them_from_disk(tmp_path: Path) -> None:
    store, _ = await opened(tmp_path)
    await store.record_events(views("forget-me", "a", "b") + views("keep-me", "c"))
    assert await store.forget_user("forget-me") == 2
    assert await store.forget_user("forget-me") == 0
    assert store.profiles(["forget-me"])[0].context == ()
    on_disk = b"".join(path.read_bytes() for path in tmp_path.iterdir())
    assert b"forget-me" not in on_disk and b"keep-me" in on_disk
    await store.close()

    again, _ = await opened(tmp_path)
    assert await again.user_history("forget-me") == []
    assert [e.item_id for e in await again.user_history("keep-me")] == ["c"]
    await again.close()


async def test_a_torn_last_record_is_cut_off(tmp_path: Path) -> None:
    store, _ = await opened(tmp_path)
    await store.record_events(views("u", "a"))
    await store.close()
    (segment,) = tmp_path.glob("log-*.bin")
    size = segment.stat().st_size
    with segment.open("ab") as file:
        file.write(HEADER.pack(100, 0) + b"half a rec")  # a crash in the middle of a write

    again, _ = await opened(tmp_path)
    assert [e.item_id for e in await again.user_history("u")] == ["a"]
    assert segment.stat().st_size == size
    await again.record_events(views("u", "b", start_ms=5))
    await again.close()
    final, _ = await opened(tmp_path)
    assert [e.item_id for e in await final.user_history("u")] == ["a", "b"]
    await final.close()


async def test_damage_before_the_last_record_refuses_to_start(tmp_path: Path) -> None:
    store, _ = await opened(tmp_path)
    await store.record_events(views("u", "a"))
    await store.record_events(views("u", "b"))
    await store.close()
    (segment,) = tmp_path.glob("log-*.bin")
    data = bytearray(segment.read_bytes())
    data[HEADER.size + 2] ^= 0xFF  # inside the first record
    segment.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError, match="damaged"):
        await backend(tmp_path).open()
    with pytest.raises(CorruptLogError, match="damaged"):  # the failed open let go of the directory
        await backend(tmp_path).open()


async def test_a_large_log_is_compacted_into_a_snapshot(tmp_path: Path) -> None:
    store, _ = await opened(tmp_path, compact_log_bytes=4096)
    for n in range(200):
        await store.record_events(views(f"user-{n % 30}", f"item-{n}", start_ms=n))
    await store.record_catalog_changes([ItemUpsert("x", ())])
    expected = {f"user-{n}": await store.user_history(f"user-{n}") for n in range(30)}
    await store.close()
    assert list(tmp_path.glob("snapshot-*.bin")), "no snapshot was written"
    assert len(list(tmp_path.glob("log-*.bin"))) == 1, "superseded segments were kept"
    modes = {path.name: path.stat().st_mode & 0o777 for path in tmp_path.glob("*.bin")}
    assert set(modes.values()) == {0o600}, f"user histories must be private to the server's user: {modes}"

    again, catalog = await opened(tmp_path, compact_log_bytes=4096)
    assert {user: await again.user_history(user) for user in expected} == expected
    assert catalog == {"x": ()}
    await again.close()


def test_a_small_state_volume_counts_as_full_only_near_its_end() -> None:
    mib = 1024 * 1024
    assert full_below(100 * 1024 * mib) == mib  # a real disk: under 1 MiB free is full
    assert full_below(mib) == mib // 10  # a 1 MiB volume with 900 KiB free is not


async def test_a_roomy_state_disk_is_no_problem(tmp_path: Path) -> None:
    store = backend(tmp_path)
    assert await store.probe() is None and store.available


async def test_a_state_directory_has_one_writer_at_a_time(tmp_path: Path) -> None:
    first, _ = await opened(tmp_path)
    with pytest.raises(StateDirInUseError, match=f"in use by another server \\(pid {os.getpid()}\\)"):
        await backend(tmp_path).open()
    await first.close()
    second, _ = await opened(tmp_path)  # the lock goes with the first one's close (or its process's death)
    await second.close()
