"""The write path over the real memory backend and live catalog: all or nothing, counted by outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from recserve.server.catalog.live import LiveCatalog
from recserve.server.exceptions import InvalidArgumentError, NotFoundError, UnavailableError
from recserve.server.state.memory import MemoryBackend
from recserve.server.state.validation import RawEvent, WriteLimits
from recserve.server.state.writes import StateWrites
from tests.catalogs import small_base, tag_embedding

LIMITS = WriteLimits(max_events_per_call=10, max_items_per_call=10, max_tags_per_item=4)


@dataclass
class Served:
    """What the write path writes the catalog to, counting the change notices."""

    catalog: LiveCatalog
    notices: list[int] = field(default_factory=list)

    def catalog_changed(self) -> None:
        self.notices.append(1)


@pytest.fixture
async def writes(tmp_path: Path) -> tuple[StateWrites, MemoryBackend, Served]:
    backend = MemoryBackend(tmp_path / "state", "always", 100, 50, 1 << 20)
    await backend.open()
    served = Served(LiveCatalog(small_base(tmp_path), tag_embedding))
    state = StateWrites(backend, LIMITS, lambda: [served], now_ms=lambda: 1_000)
    state.ready = True
    return state, backend, served


async def test_events_are_stored_and_unknown_items_reported(writes) -> None:  # noqa: ANN001
    state, backend, _ = writes
    recorded = await state.record_events([RawEvent("u", "item-1", 2, None), RawEvent("u", "ghost", 1, 5)])
    assert recorded.accepted == 2 and recorded.unknown_item_ids == ["ghost"]
    assert [(e.item_id, e.time_ms) for e in await state.user_history("u")] == [
        ("ghost", 5),
        ("item-1", 1_000),
    ]
    assert backend.profiles(["u"])[0].context == ("ghost", "item-1")
    assert state.statistics.events["accepted"] == 2


async def test_an_invalid_call_stores_nothing(writes) -> None:  # noqa: ANN001
    state, _, served = writes
    with pytest.raises(InvalidArgumentError, match=r"events\[1\]\.type"):
        await state.record_events([RawEvent("u", "item-1", 2, None), RawEvent("u", "item-2", 0, None)])
    assert await state.user_history("u") == []
    with pytest.raises(InvalidArgumentError, match=r"items\[1\]\.tags"):
        await state.upsert_items([("new", ["a"]), ("other", ["a", "b", "c", "d", "e"])])
    assert served.catalog.row_of("new") == 0
    assert state.statistics.events["rejected"] == 2
    assert state.statistics.catalog["upsert", "rejected"] == 2


async def test_catalog_writes_are_visible_and_readable(writes) -> None:  # noqa: ANN001
    state, _, served = writes
    assert await state.upsert_items([("new", ["a", "b"])]) == 1
    assert state.item_tags("new") == ("a", "b") and state.item_tags("item-3") == ("base",)
    assert await state.delete_items(["new", "item-3", "never"]) == (2, ["never"])
    for gone in ("new", "item-3", "never"):
        with pytest.raises(NotFoundError, match="not in the catalog"):
            state.item_tags(gone)
    assert len(served.notices) == 2
    assert state.statistics.catalog["delete", "accepted"] == 2


async def test_catalog_writes_wait_for_the_model(tmp_path: Path) -> None:
    def loading() -> list[Served]:
        raise UnavailableError("the model is still loading")

    backend = MemoryBackend(tmp_path, "everysec", 100, 50, 1 << 20)
    await backend.open()
    state = StateWrites(backend, LIMITS, loading)
    state.ready = True
    with pytest.raises(UnavailableError):
        await state.upsert_items([("new", [])])
    assert (await state.record_events([RawEvent("u", "i", 1, None)])).unknown_item_ids == []
    await backend.close()
