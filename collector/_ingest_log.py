"""The ingest log: every accepted export request, on disk before it is acknowledged.

A receiver appends the request (as protobuf bytes) here and answers the client at once; the
writer lands it later. The sequence number of the last request landed is committed in the
same DuckDB transaction as its rows (`comptroller_meta.ingest_log_seq`), so on start the
collector replays exactly the requests after it: a crash between acknowledgement and
landing loses nothing, and a crash after landing does not land anything twice.

Why not acknowledge after the commit, as before: a DuckDB checkpoint blocks the writer for
100–900 ms, and every request waiting on a commit waited for it too. Appending to a file
costs tens of microseconds whatever DuckDB is doing.

Layout: a directory of segment files named by the first sequence number they hold
(`00000000000000000001.log`). A segment starts with a header (magic, format version); an
entry is a header (magic, sequence, kind, length, CRC-32 of the payload, CRC-32 of the
header) and the payload. A torn entry at the end of a segment — the process died while
writing it, so it was never acknowledged — is cut off on open. Damage anywhere else (a
flipped byte, a zeroed block) is not silent: the reader scans forward to the next entry whose
two checksums hold, lands what follows, keeps the damaged bytes in `damaged/` and reports
the damage (segment, offset, entries lost) in `damage`, the log and `/health`. Segments of
format 1 (no segment header, no header checksum: before the damage handling) are read the
same way. Segments whose entries are all landed are deleted.

Durability: `write(2)` puts an entry in the page cache, which outlives the process (kill -9,
a crash, an OOM kill). With `fsync=True` each append is also flushed to the device, which
survives a power cut too, at the price of a disk flush per request.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

from comptroller._private import private_dir
from comptroller.errors import ComptrollerError

_log = logging.getLogger(__name__)

_MAGIC: Final = 0x43544C47  # "CTLG"
_MAGIC_BYTES: Final = struct.pack("<I", _MAGIC)
_PREFIX: Final = struct.Struct("<IQBII")  # magic, seq, kind, length, crc32 of the payload
_HEADER_CRC: Final = struct.Struct("<I")  # crc32 of the prefix (format 2)
_SEGMENT: Final = struct.Struct("<8sI")  # magic, format version
_SEGMENT_MAGIC: Final = b"CTLGSEG\n"
FORMAT_VERSION: Final = 2
"""Format of the segments this version writes (1: no segment header, no header checksum)."""
_SEGMENT_HEADER: Final = _SEGMENT.pack(_SEGMENT_MAGIC, FORMAT_VERSION)
_SUFFIX: Final = ".log"
_DAMAGED_DIR: Final = "damaged"

LoggedSignal: TypeAlias = Literal["traces", "logs"]
KINDS: Final[dict[str, int]] = {"traces": 1, "logs": 2}
SIGNALS: Final[dict[int, LoggedSignal]] = {1: "traces", 2: "logs"}


class IngestLogError(ComptrollerError):
    """The ingest log cannot be written or read (disk full, permissions, corruption)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One logged request."""

    seq: int
    signal: LoggedSignal
    payload: bytes


@dataclass(frozen=True, slots=True)
class Damage:
    """Bytes of a segment that hold no readable entry, where acknowledged requests were."""

    segment: str
    """The segment file's name."""
    offset: int
    """Where the damage starts in it."""
    length: int
    """How many bytes up to the next readable entry (or the end of the segment)."""
    entries: int | None
    """Acknowledged, not yet landed entries lost in it (None: unknown, at least one)."""
    first_seq: int
    """The first sequence number it may have held."""
    aside: str | None
    """Where a copy of the damaged bytes was kept (None: it could not be written)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "segment": self.segment,
            "offset": self.offset,
            "bytes": self.length,
            "entries": self.entries,
            "first_seq": self.first_seq,
            "aside": self.aside,
        }


@dataclass(frozen=True, slots=True)
class _Gap:
    """Unreadable bytes between two readable entries (`next_seq` None: up to the end)."""

    offset: int
    end: int
    prev_seq: int | None
    next_seq: int | None


@dataclass(frozen=True, slots=True)
class _Torn:
    """An entry cut short at the end of a segment: its write never finished."""

    offset: int


class IngestLog:
    """Append-only segments of accepted requests, replayed from the last landed one.

    Args:
        directory: Where the segments live (created if missing).
        segment_bytes: A segment is closed and a new one started beyond this size.
        fsync: Flush every append to the device (survives a power cut, slower).

    Example:
        >>> log = IngestLog(tmp_path / "ingest")                      # doctest: +SKIP
        >>> seq = log.append("traces", request.SerializeToString())   # doctest: +SKIP
        >>> [e.seq for e in log.replay(after=0)]                      # doctest: +SKIP
    """

    def __init__(
        self, directory: Path | str, *, segment_bytes: int = 64 << 20, fsync: bool = False
    ) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self._lock = threading.Lock()
        try:
            private_dir(self.directory)  # accepted requests are billing data: 0700
        except OSError as exc:
            raise IngestLogError(
                f"cannot create the ingest log directory {self.directory}: "
                f"{exc.strerror or exc}; check the path and its permissions"
            ) from exc
        self._segments = sorted(self._segment_starts())
        self._damage: dict[tuple[str, int], Damage] = {}
        self.last_seq = 0
        """Sequence number of the newest entry on disk."""
        self.truncated_bytes = 0
        """Bytes of a torn final entry cut off on open (a request never acknowledged)."""
        if self._segments:
            self.last_seq = self._recover_tail()
        self._fd: int | None = None
        self._size = 0
        self._pending = b""

    # --- writing -------------------------------------------------------------------------
    def append(self, signal: str, payload: bytes) -> int:
        """Write one request; return its sequence number once it is in the file.

        Raises:
            IngestLogError: The entry could not be written (e.g. the disk is full).
        """
        kind = KINDS[signal]
        with self._lock:
            seq = self.last_seq + 1
            prefix = _PREFIX.pack(_MAGIC, seq, kind, len(payload), zlib.crc32(payload))
            header = prefix + _HEADER_CRC.pack(zlib.crc32(prefix))
            try:
                if self._fd is None or self._size >= self.segment_bytes:
                    self._open_segment(seq)
                fd = self._fd
                assert fd is not None
                pending = self._pending
                _write_all(fd, pending + header + payload)
                if self.fsync:
                    os.fsync(fd)
            except OSError as exc:
                self._cut_back()
                raise IngestLogError(
                    f"cannot write the ingest log in {self.directory}: {exc.strerror or exc}; "
                    "free disk space there (the request was not accepted; the client retries)"
                ) from exc
            self._size += len(pending) + len(header) + len(payload)
            self._pending = b""
            self.last_seq = seq
            return seq

    def _open_segment(self, first_seq: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        path = self._path(first_seq)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = os.fstat(self._fd).st_size
        # A new segment's header goes out in the same write as its first entry: a full
        # disk then cuts both back, and a crash leaves a torn tail, never a lone header.
        self._pending = b"" if self._size else _SEGMENT_HEADER
        if first_seq not in self._segments:
            self._segments.append(first_seq)

    def _cut_back(self) -> None:
        # A partial write (ENOSPC mid-entry) must not stay in front of the next append.
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            os.close(self._fd)
            self._fd = None  # the next append starts a segment; recovery cuts the tail

    # --- reading -------------------------------------------------------------------------
    def replay(self, *, after: int) -> Iterator[Entry]:
        """Every readable entry with a sequence number above `after`, oldest first.

        Damage that may hold entries above `after` is recorded in `damage`, logged, and
        its bytes copied to `damaged/`; the entries after it are still replayed.
        """
        with self._lock:
            segments = list(self._segments)
        for index, start in enumerate(segments):
            following = segments[index + 1] if index + 1 < len(segments) else None
            if following is not None and following - 1 <= after:
                continue  # every entry of this segment is landed
            path = self._path(start)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue  # released while we were reading: landed already
            for item in _walk(data):
                if isinstance(item, Entry):
                    if item.seq > after:
                        yield item
                elif isinstance(item, _Gap):
                    self._damaged(path, data, item, start=start, following=following, after=after)

    @property
    def damage(self) -> list[Damage]:
        """Damage found while replaying, oldest first (empty when the log was sound)."""
        with self._lock:
            return list(self._damage.values())

    def damage_report(self) -> list[dict[str, Any]]:
        """`damage` as JSON-ready dicts (for `/health`)."""
        return [item.as_dict() for item in self.damage]

    def _damaged(
        self, path: Path, data: bytes, gap: _Gap, *, start: int, following: int | None, after: int
    ) -> None:
        first = (start - 1 if gap.prev_seq is None else gap.prev_seq) + 1
        upper = gap.next_seq if gap.next_seq is not None else following
        if upper is not None and upper - 1 <= after:
            return  # every entry it held is landed: nothing is lost
        lost = None if upper is None else upper - max(first, after + 1)
        if lost is not None and lost < 0:
            lost = None  # numbers reused after an earlier loss: the count is not known
        aside: str | None = None
        target = self.directory / _DAMAGED_DIR / f"{path.stem}-{gap.offset}.bin"
        try:
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(data[gap.offset : gap.end])
            aside = str(target)
        except OSError as exc:
            _log.error("cannot keep the damaged bytes aside in %s: %s", target, exc)
        damage = Damage(
            segment=path.name,
            offset=gap.offset,
            length=gap.end - gap.offset,
            entries=lost,
            first_seq=max(first, after + 1),
            aside=aside,
        )
        with self._lock:
            if (damage.segment, damage.offset) in self._damage:
                return
            self._damage[(damage.segment, damage.offset)] = damage
        _log.error(
            "ingest log segment %s is damaged at byte %d (%d bytes): %s acknowledged "
            "request(s) from sequence %d cannot be landed; the entries after it are landed. "
            "The damaged bytes are in %s; check the disk, and re-send those requests if "
            "their sender still has them",
            path,
            damage.offset,
            damage.length,
            "an unknown number of" if lost is None else lost,
            damage.first_seq,
            aside or "(not kept)",
        )

    def release(self, *, upto: int) -> int:
        """Delete the segments whose entries are all landed (seq ≤ `upto`); return how many."""
        removed = 0
        with self._lock:
            while len(self._segments) > 1 and self._segments[1] - 1 <= upto:
                start = self._segments.pop(0)
                self._path(start).unlink(missing_ok=True)
                removed += 1
        return removed

    def bind(self, database_id: str) -> None:
        """Tie the log to one database, or refuse one whose entries belong to another.

        The default log directory is named after the database file: a database deleted
        by hand and created anew must not receive the old database's requests.

        Raises:
            IngestLogError: The log was written for another database.
        """
        marker = self.directory / "DATABASE"
        try:
            bound = marker.read_text().strip()
        except FileNotFoundError:
            bound = None
        except OSError as exc:
            raise IngestLogError(f"cannot read {marker}: {exc.strerror or exc}") from exc
        if bound is None or (bound != database_id and not self._segments):
            marker.write_text(database_id + "\n")  # nothing in it: free to serve this one
        elif bound != database_id:
            raise IngestLogError(
                f"the ingest log in {self.directory} belongs to another database "
                f"({bound}, this one is {database_id}): it may hold requests that database "
                "never landed. Start the collector on that database to land them, or move "
                "the directory aside if that database is gone"
            )

    def advance_to(self, seq: int) -> None:
        """Number the next entry after `seq` (the database landed up to it already)."""
        with self._lock:
            if seq > self.last_seq:
                self.last_seq = seq
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None  # the next entry starts a segment named by its number

    def clear(self, *, landed: int) -> bool:
        """Delete every segment if all entries are landed (a clean shutdown); True if so."""
        with self._lock:
            if landed < self.last_seq:
                return False
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            for start in self._segments:
                self._path(start).unlink(missing_ok=True)
            self._segments.clear()
            return True

    def close(self) -> None:
        """Close the open segment (entries stay for replay until released)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    @property
    def segments(self) -> int:
        """Segment files on disk."""
        return len(self._segments)

    def size_bytes(self) -> int:
        """Bytes on disk over every segment."""
        total = 0
        for start in list(self._segments):
            with contextlib.suppress(OSError):  # released meanwhile
                total += self._path(start).stat().st_size
        return total

    # --- internals -----------------------------------------------------------------------
    def _path(self, first_seq: int) -> Path:
        return self.directory / f"{first_seq:020d}{_SUFFIX}"

    def _segment_starts(self) -> Iterator[int]:
        for path in self.directory.glob(f"*{_SUFFIX}"):
            if path.stem.isdigit():
                yield int(path.stem)

    def _recover_tail(self) -> int:
        """The newest sequence number on disk; cut a torn entry off the last segment."""
        last = self._segments[-1]
        path = self._path(last)
        seq = last - 1
        damaged = False
        with path.open("rb") as handle:
            data = handle.read()
        for item in _walk(data):
            if isinstance(item, Entry):
                seq = item.seq
            elif isinstance(item, _Gap):
                damaged = True  # kept as it is: replay reports it and lands what follows
            else:
                self.truncated_bytes = len(data) - item.offset
                with path.open("r+b") as handle:
                    handle.truncate(item.offset)
        if seq < last and len(self._segments) > 1 and not damaged:
            # An empty last segment (died right after creating it): its predecessor counts.
            path.unlink(missing_ok=True)
            self._segments.pop()
            return self._recover_tail()
        return max(seq, 0)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _walk(data: bytes) -> Iterator[Entry | _Gap | _Torn]:
    """The entries of one segment, the gaps of damage between them, and a torn tail.

    A gap ends at the next offset where a whole entry with sound checksums (and a higher
    sequence number) starts; a torn tail is an entry whose header holds but whose payload
    stops at the end of the data — what a write cut short by a crash leaves.
    """
    if len(data) < _SEGMENT.size and _SEGMENT_HEADER.startswith(data):
        if data:
            yield _Torn(0)  # died writing a new segment's first entry
        return
    version, offset = _segment_format(data)
    header = _PREFIX.size + (_HEADER_CRC.size if version >= 2 else 0)
    prev: int | None = None
    while offset < len(data):
        parsed = _parse(data, offset, version, header)
        if isinstance(parsed, tuple):
            entry, end = parsed
            if prev is None or entry.seq > prev:
                yield entry
                prev, offset = entry.seq, end
                continue
        resume = _resync(data, offset + 1, version, header, prev)
        if parsed == "torn" and resume is None:
            # Nothing sound after it either (a sound entry after it would make it damage:
            # e.g. a flipped length in a format-1 header, which has no header checksum).
            yield _Torn(offset)
            return
        if resume is None:
            yield _Gap(offset, len(data), prev, None)
            return
        at, next_seq = resume
        yield _Gap(offset, at, prev, next_seq)
        offset = at


def _segment_format(data: bytes) -> tuple[int, int]:
    """(format version, offset of the first entry) of a segment's bytes."""
    if data[: len(_SEGMENT_MAGIC)] == _SEGMENT_MAGIC and len(data) >= _SEGMENT.size:
        _, version = _SEGMENT.unpack_from(data, 0)
        if version > FORMAT_VERSION:
            raise IngestLogError(
                f"an ingest log segment has format {version}, written by a newer comptroller; "
                "run that version to land it"
            )
        return version, _SEGMENT.size
    if data[: len(_MAGIC_BYTES)] == _MAGIC_BYTES or not data:
        return 1, 0  # written before segments had a header
    if data[_SEGMENT.size : _SEGMENT.size + len(_MAGIC_BYTES)] == _MAGIC_BYTES:
        # A damaged segment header: the rest is read as the current format (the header's
        # bytes make a gap of their own).
        return FORMAT_VERSION, 0
    return 1, 0  # an old segment whose first entry is damaged


def _parse(
    data: bytes, offset: int, version: int, header: int
) -> tuple[Entry, int] | Literal["torn", "bad"]:
    if offset + header > len(data):
        # Too short for a header: torn if what is there could start one.
        rest = data[offset : offset + len(_MAGIC_BYTES)]
        return "torn" if _MAGIC_BYTES.startswith(rest) else "bad"
    magic, seq, kind, length, crc = _PREFIX.unpack_from(data, offset)
    if magic != _MAGIC:
        return "bad"
    if version >= 2:
        (header_crc,) = _HEADER_CRC.unpack_from(data, offset + _PREFIX.size)
        if zlib.crc32(data[offset : offset + _PREFIX.size]) != header_crc:
            return "bad"
    elif kind not in SIGNALS:
        return "bad"
    end = offset + header + length
    if end > len(data):
        return "torn"
    payload = data[offset + header : end]
    if kind not in SIGNALS or zlib.crc32(payload) != crc:
        return "bad"
    return Entry(seq=seq, signal=SIGNALS[kind], payload=payload), end


def _resync(
    data: bytes, start: int, version: int, header: int, prev: int | None
) -> tuple[int, int] | None:
    """The next offset from `start` where a sound entry begins, and its sequence number."""
    at = data.find(_MAGIC_BYTES, start)
    while at != -1:
        parsed = _parse(data, at, version, header)
        if isinstance(parsed, tuple) and (prev is None or parsed[0].seq > prev):
            return at, parsed[0].seq
        at = data.find(_MAGIC_BYTES, at + 1)
    return None
