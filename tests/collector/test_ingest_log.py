"""The ingest log on real files: order, restart, torn tails, damage, and release."""

from __future__ import annotations

from pathlib import Path

import pytest

from comptroller.collector._ingest_log import IngestLog, IngestLogError


def _payloads(log: IngestLog, after: int = 0) -> list[tuple[int, str, bytes]]:
    return [(e.seq, e.signal, e.payload) for e in log.replay(after=after)]


def test_entries_replay_in_order_after_a_position(tmp_path: Path) -> None:
    log = IngestLog(tmp_path / "log")
    seqs = [log.append("traces", b"a"), log.append("logs", b"bb"), log.append("traces", b"")]
    assert seqs == [1, 2, 3]
    assert _payloads(log) == [(1, "traces", b"a"), (2, "logs", b"bb"), (3, "traces", b"")]
    assert _payloads(log, after=2) == [(3, "traces", b"")]
    log.close()


def test_numbering_survives_a_restart(tmp_path: Path) -> None:
    log = IngestLog(tmp_path / "log")
    log.append("traces", b"one")
    log.append("traces", b"two")
    log.close()
    again = IngestLog(tmp_path / "log")
    assert again.last_seq == 2
    assert again.append("logs", b"three") == 3
    assert [seq for seq, _, _ in _payloads(again)] == [1, 2, 3]
    again.close()


def test_a_torn_final_entry_is_cut_off_and_its_number_reused(tmp_path: Path) -> None:
    log = IngestLog(tmp_path / "log")
    for payload in (b"first", b"second", b"third-never-acknowledged"):
        log.append("traces", payload)
    log.close()
    (segment,) = (tmp_path / "log").glob("*.log")
    data = segment.read_bytes()
    segment.write_bytes(data[:-5])  # the process died inside write(2)

    again = IngestLog(tmp_path / "log")
    assert again.last_seq == 2
    assert again.truncated_bytes == len(data) - 5 - segment.stat().st_size
    assert _payloads(again) == [(1, "traces", b"first"), (2, "traces", b"second")]
    assert again.append("traces", b"retried") == 3
    assert _payloads(again, after=2) == [(3, "traces", b"retried")]
    again.close()


def test_damage_inside_an_older_segment_is_an_error_not_a_silent_skip(tmp_path: Path) -> None:
    log = IngestLog(tmp_path / "log", segment_bytes=1)  # one entry per segment
    for payload in (b"alpha", b"bravo", b"charlie"):
        log.append("logs", payload)
    log.close()
    first = sorted((tmp_path / "log").glob("*.log"))[0]
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF  # bit rot in the payload: the CRC no longer matches
    first.write_bytes(bytes(data))
    again = IngestLog(tmp_path / "log")
    with pytest.raises(IngestLogError, match=r"damaged at byte 0 .* Move the file aside"):
        _payloads(again)
    assert _payloads(again, after=1) == [(2, "logs", b"bravo"), (3, "logs", b"charlie")]
    again.close()


def test_landed_segments_are_released_but_never_the_newest(tmp_path: Path) -> None:
    log = IngestLog(tmp_path / "log", segment_bytes=1)
    for i in range(4):
        log.append("traces", bytes([i]))
    assert log.segments == 4
    assert log.release(upto=2) == 2
    assert log.segments == 2
    assert [seq for seq, _, _ in _payloads(log, after=2)] == [3, 4]
    assert log.release(upto=4) == 1
    assert log.segments == 1  # the newest stays: it is where numbering resumes
    log.close()
    assert IngestLog(tmp_path / "log").last_seq == 4


def test_numbering_resumes_after_what_the_database_landed(tmp_path: Path) -> None:
    # The directory was removed by hand: numbers below the landed position must not be reused
    # (replay would skip them as landed).
    log = IngestLog(tmp_path / "fresh")
    log.advance_to(41)
    assert log.append("traces", b"x") == 42
    assert _payloads(log, after=41) == [(42, "traces", b"x")]
    log.close()


def test_an_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(IngestLogError, match="cannot create the ingest log directory"):
        IngestLog(blocker / "log")


def test_a_log_with_entries_refuses_a_database_it_was_not_written_for(tmp_path: Path) -> None:
    log = IngestLog(tmp_path / "log")
    log.bind("db-one")
    log.append("traces", b"not landed yet")
    log.bind("db-one")  # the same database again: fine
    with pytest.raises(IngestLogError, match=r"belongs to another database .*move the directory"):
        log.bind("db-two")
    log.close()


def test_a_collector_on_a_recreated_database_does_not_replay_the_old_log(tmp_path: Path) -> None:
    from comptroller.collector import Collector

    db = tmp_path / "usage.duckdb"
    log_dir = tmp_path / "usage.duckdb.ingest"
    Collector(db).close()
    assert list(log_dir.glob("*.log")) == []  # a clean shutdown landed and emptied it
    db.unlink()
    Collector(db).close()  # an empty log serves the new database

    # A crash left an entry the old database never landed, then the database was deleted.
    IngestLog(log_dir).append("traces", b"unlanded")
    db.unlink()
    with pytest.raises(IngestLogError, match=r"usage\.duckdb\.ingest belongs to another database"):
        Collector(db)
    log_dir.rename(tmp_path / "old-ingest")
    Collector(db).close()  # a new log for the new database
