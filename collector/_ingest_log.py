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
(`00000000000000000001.log`). An entry is a header (magic, sequence, kind, length, CRC-32 of
the payload) and the payload. A torn entry at the end of the last segment — the process died
while writing it, so it was never acknowledged — is cut off on open. Segments whose entries
are all landed are deleted.

Durability: `write(2)` puts an entry in the page cache, which outlives the process (kill -9,
a crash, an OOM kill). With `fsync=True` each append is also flushed to the device, which
survives a power cut too, at the price of a disk flush per request.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, TypeAlias

from comptroller.errors import ComptrollerError

_MAGIC: Final = 0x43544C47  # "CTLG"
_HEADER: Final = struct.Struct("<IQBII")  # magic, seq, kind, length, crc32
_SUFFIX: Final = ".log"

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
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise IngestLogError(
                f"cannot create the ingest log directory {self.directory}: "
                f"{exc.strerror or exc}; check the path and its permissions"
            ) from exc
        self._segments = sorted(self._segment_starts())
        self.last_seq = 0
        """Sequence number of the newest entry on disk."""
        self.truncated_bytes = 0
        """Bytes of a torn final entry cut off on open (a request never acknowledged)."""
        if self._segments:
            self.last_seq = self._recover_tail()
        self._fd: int | None = None
        self._size = 0

    # --- writing -------------------------------------------------------------------------
    def append(self, signal: str, payload: bytes) -> int:
        """Write one request; return its sequence number once it is in the file.

        Raises:
            IngestLogError: The entry could not be written (e.g. the disk is full).
        """
        kind = KINDS[signal]
        with self._lock:
            seq = self.last_seq + 1
            header = _HEADER.pack(_MAGIC, seq, kind, len(payload), zlib.crc32(payload))
            try:
                if self._fd is None or self._size >= self.segment_bytes:
                    self._open_segment(seq)
                fd = self._fd
                assert fd is not None
                _write_all(fd, header + payload)
                if self.fsync:
                    os.fsync(fd)
            except OSError as exc:
                self._cut_back()
                raise IngestLogError(
                    f"cannot write the ingest log in {self.directory}: {exc.strerror or exc}; "
                    "free disk space there (the request was not accepted; the client retries)"
                ) from exc
            self._size += len(header) + len(payload)
            self.last_seq = seq
            return seq

    def _open_segment(self, first_seq: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
        path = self._path(first_seq)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = os.fstat(self._fd).st_size
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
        """Every entry with a sequence number above `after`, oldest first."""
        with self._lock:
            segments = list(self._segments)
        for index, start in enumerate(segments):
            following = segments[index + 1] if index + 1 < len(segments) else None
            if following is not None and following - 1 <= after:
                continue  # every entry of this segment is landed
            for entry in _read(self._path(start)):
                if entry.seq > after:
                    yield entry

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
        good = 0
        seq = last - 1
        with path.open("rb") as handle:
            data = handle.read()
        for entry, end in _entries(data, path):
            seq, good = entry.seq, end
        if good < len(data):
            self.truncated_bytes = len(data) - good
            with path.open("r+b") as handle:
                handle.truncate(good)
        if seq < last and len(self._segments) > 1:
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


def _read(path: Path) -> Iterator[Entry]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return  # released while we were reading: landed already
    consumed = 0
    for entry, end in _entries(data, path):
        yield entry
        consumed = end
    if consumed < len(data):
        # The tail of the newest segment was repaired on open: this is damage, not a torn
        # write, and skipping it would drop acknowledged requests without a word.
        raise IngestLogError(
            f"{path} is damaged at byte {consumed} of {len(data)}; the entries after it cannot be "
            "replayed. Move the file aside to start without them, and report the loss"
        )


def _entries(data: bytes, path: Path) -> Iterator[tuple[Entry, int]]:
    """Entries of one segment with the offset just past each; stops at a torn tail."""
    offset = 0
    size = _HEADER.size
    while offset + size <= len(data):
        magic, seq, kind, length, crc = _HEADER.unpack_from(data, offset)
        end = offset + size + length
        if magic != _MAGIC or end > len(data):
            return
        payload = data[offset + size : end]
        if zlib.crc32(payload) != crc or kind not in SIGNALS:
            return
        yield Entry(seq=seq, signal=SIGNALS[kind], payload=payload), end
        offset = end
