"""A durable append-only log of records in segments, with snapshots that make the old segments redundant.

Layout of the directory:
- `log-<G>.bin`: segment G, records appended in order;
- `snapshot-<G>.bin`: every record needed to rebuild the state as it was when segment G began.

Replaying means reading the newest snapshot and then every segment from its generation on. A record on disk
is its length, the CRC32 of its payload, and the payload, so that a record torn by a crash is recognised and
cut off at start-up. Compaction starts a new segment, writes the state at that point as the next snapshot
(write, fsync, rename: it exists complete or not at all) and then deletes what it supersedes; deleted data
(a forgotten user) is gone from disk once it returns.

Appends happen on the caller's thread (the event loop), in the order the state changes; `fsync` policy
`always` makes `flushed()` wait for an fsync covering the append (concurrent writers share one: group
commit), `everysec` lets a background task fsync once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from recserve.server.exceptions import UnavailableError

logger = logging.getLogger(__name__)

HEADER = struct.Struct("<II")  # payload length, CRC32 of the payload
SEGMENT = re.compile(r"^log-(\d{8})\.bin$")
SNAPSHOT = re.compile(r"^snapshot-(\d{8})\.bin$")
EVERYSEC_INTERVAL_S = 1.0


class CorruptLogError(RuntimeError):
    """A record in the middle of the log does not read back; the state cannot be rebuilt safely."""


class StateDirInUseError(RuntimeError):
    """Another process has the state directory open: two writers would each miss the other's writes."""


LOCK_FILE = "LOCK"


def frame(payload: bytes) -> bytes:
    """A record as it is written: header, then payload."""
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def read_records(path: Path) -> tuple[list[bytes], int]:
    """The whole records of a file, and the offset after the last one (less than its size if torn).

    Only the last record can be torn (a crash during its write): it then runs to the end of the file.

    Raises:
        CorruptLogError: a record followed by more data does not read back.
    """
    data = path.read_bytes()
    records, offset = [], 0
    while offset < len(data):
        if offset + HEADER.size > len(data):
            break  # a torn header
        length, crc = HEADER.unpack_from(data, offset)
        end = offset + HEADER.size + length
        payload = data[offset + HEADER.size : end]
        if end >= len(data) and (end > len(data) or zlib.crc32(payload) != crc):
            break  # the torn last record
        if zlib.crc32(payload) != crc:
            raise CorruptLogError(f"{path} is damaged at byte {offset}; the state cannot be rebuilt")
        records.append(payload)
        offset = end
    return records, offset


@dataclass(frozen=True)
class Replay:
    """What start-up reads back: the records to apply, in order, and where they came from."""

    records: list[bytes]
    snapshot_generation: int | None
    segments: int
    truncated_bytes: int


class AppendLog:
    """The log of one state directory. `open()` first, then `append` + `flushed`, `compact`, `close`."""

    def __init__(self, directory: Path, fsync: str) -> None:
        self.directory = directory
        self.fsync_always = fsync == "always"
        self.generation = 0
        self._fd = -1
        self._segment_bytes = 0  # size of the current segment
        self._appended = 0  # bytes appended since open, over every segment
        self._synced = 0  # of which an fsync has covered this many
        self._sync_task: asyncio.Task[None] | None = None
        self._everysec_task: asyncio.Task[None] | None = None
        self._compaction_lock = asyncio.Lock()
        self._lock_fd = -1
        self.snapshot_bytes = 0
        """Size of the newest snapshot: compacting is worth it once the log has grown about as large."""

    @property
    def size_bytes(self) -> int:
        """Bytes in the current segment (what compaction would fold into a snapshot)."""
        return self._segment_bytes

    def open(self) -> Replay:
        """Read everything back (cutting off a torn last record), then start appending.

        Raises:
            CorruptLogError: a record before the last one is damaged.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            return self._read_back()
        except BaseException:
            self._unlock()  # a log that did not open holds nothing: the directory may be retried or moved
            raise

    def _read_back(self) -> Replay:
        snapshots = self._generations(SNAPSHOT)
        base = snapshots[-1] if snapshots else None
        records: list[bytes] = []
        if base is not None:
            snapshot_records, _ = read_records(self._snapshot_path(base))
            records += snapshot_records
            self.snapshot_bytes = self._snapshot_path(base).stat().st_size
        segments = [g for g in self._generations(SEGMENT) if base is None or g >= base]
        truncated = 0
        for position, generation in enumerate(segments):
            path = self._segment_path(generation)
            segment_records, end = read_records(path)
            if end < path.stat().st_size:
                if position != len(segments) - 1:  # only the segment being written can be torn
                    raise CorruptLogError(f"{path} is damaged at byte {end}; the state cannot be rebuilt")
                truncated = path.stat().st_size - end
                logger.warning(
                    "state log %s: cut off a torn record of %d bytes at byte %d", path, truncated, end
                )
                os.truncate(path, end)
            records += segment_records
        self.generation = segments[-1] if segments else (base or 1)
        self._open_segment(self.generation)
        self._remove_superseded(base)
        return Replay(records, base, len(segments), truncated)

    def _lock(self) -> None:
        """Hold the directory's lock for as long as the log is open (the kernel drops it if the process dies).

        Raises:
            StateDirInUseError: another process holds it.
        """
        path = self.directory / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateDirInUseError(
                f"the state directory {self.directory.resolve()} is in use by another server (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def start(self) -> None:
        """Start the once-a-second fsync (policy everysec); call from the event loop."""
        if not self.fsync_always and self._everysec_task is None:
            self._everysec_task = asyncio.get_running_loop().create_task(self._fsync_every_second())

    def append(self, payload: bytes) -> None:
        """Write one record (not yet fsynced). On failure nothing of it stays in the log.

        Raises:
            UnavailableError: the write failed (disk full, I/O error).
        """
        data = frame(payload)
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, "No space left on device: a short write")  # the rest did not fit
        except OSError as error:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._segment_bytes)
            raise UnavailableError(
                f"cannot write the state log ({error.strerror or error}); retry later"
            ) from error
        self._segment_bytes += len(data)
        self._appended += len(data)

    async def flushed(self) -> None:
        """Return once what was appended so far is on disk (policy always); at once for everysec.

        Raises:
            UnavailableError: fsync failed.
        """
        if not self.fsync_always:
            return
        target = self._appended
        while self._synced < target:
            await asyncio.shield(self._syncing())

    def _syncing(self) -> asyncio.Task[None]:
        """The fsync under way, or a new one covering everything appended so far (one at a time)."""
        if self._sync_task is None or self._sync_task.done():
            self._sync_task = asyncio.get_running_loop().create_task(self._sync(self._fd, self._appended))
        return self._sync_task

    async def _sync(self, fd: int, target: int) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, os.fsync, fd)
        except OSError as error:
            raise UnavailableError(f"cannot fsync the state log ({error.strerror}); retry later") from error
        self._synced = max(self._synced, target)

    async def _no_sync_running(self) -> None:
        """Return (without a later await) once no fsync is under way, so the caller may swap the segment."""
        while self._sync_task is not None and not self._sync_task.done():
            with contextlib.suppress(UnavailableError):
                await asyncio.shield(self._sync_task)

    async def _fsync_every_second(self) -> None:
        while True:
            await asyncio.sleep(EVERYSEC_INTERVAL_S)
            if self._synced < self._appended:
                with contextlib.suppress(UnavailableError):
                    await asyncio.shield(self._syncing())

    async def compact(self, snapshot: Callable[[], Iterable[bytes]]) -> None:
        """Fold everything so far into a snapshot and delete the segments and snapshots it supersedes.

        `snapshot` is called on the event loop right after the new segment starts and must return the
        records of the state at that moment (its iteration may run on another thread, so it must not read
        state that later appends change).
        """
        async with self._compaction_lock:
            loop = asyncio.get_running_loop()
            await self._no_sync_running()
            old_fd, old_appended = self._fd, self._appended
            generation = self.generation + 1
            self._open_segment(generation)
            records = snapshot()  # the state as of the segment switch: no await in between
            # The old segment's fsync is the one under way, so no fsync of the new segment can finish first
            # and count the old segment's bytes as synced.
            old_sync = self._sync_task = loop.create_task(self._sync(old_fd, old_appended))
            try:
                await asyncio.shield(old_sync)
            finally:
                os.close(old_fd)
            await loop.run_in_executor(None, self._write_snapshot, generation, records)
            self._remove_superseded(generation)

    async def close(self) -> None:
        """Flush to disk and close."""
        if self._everysec_task is not None:
            self._everysec_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._everysec_task
        await self._no_sync_running()
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            await self._sync(fd, self._appended)
            os.close(fd)
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            lock_fd, self._lock_fd = self._lock_fd, -1
            os.close(lock_fd)  # releases the lock

    def _open_segment(self, generation: int) -> None:
        path = self._segment_path(generation)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.generation = generation
        self._segment_bytes = os.fstat(self._fd).st_size
        self._fsync_directory()

    def _write_snapshot(self, generation: int, records: Iterable[bytes]) -> None:
        final = self._snapshot_path(generation)
        temporary = final.with_suffix(".tmp")
        temporary.unlink(missing_ok=True)  # a stray one from a crash may have another mode
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # as private as the log
        with open(descriptor, "wb") as file:
            for payload in records:
                file.write(frame(payload))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, final)
        self._fsync_directory()
        self.snapshot_bytes = final.stat().st_size

    def _remove_superseded(self, generation: int | None) -> None:
        """Delete the segments and snapshots older than snapshot `generation`, and stray temporary files."""
        for stray in self.directory.glob("snapshot-*.tmp"):
            stray.unlink(missing_ok=True)
        if generation is None:
            return
        for old in self._generations(SEGMENT):
            if old < generation:
                self._segment_path(old).unlink(missing_ok=True)
        for old in self._generations(SNAPSHOT):
            if old < generation:
                self._snapshot_path(old).unlink(missing_ok=True)
        self._fsync_directory()

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _generations(self, pattern: re.Pattern[str]) -> list[int]:
        return sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := pattern.match(p.name)))

    def _segment_path(self, generation: int) -> Path:
        return self.directory / f"log-{generation:08d}.bin"

    def _snapshot_path(self, generation: int) -> Path:
        return self.directory / f"snapshot-{generation:08d}.bin"
