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


def _flip(segment: Path, at: int) -> None:
    data = bytearray(segment.read_bytes())
    data[at] ^= 0xFF
    segment.write_bytes(bytes(data))


def _entry_offsets(segment: Path) -> list[int]:
    """Where each entry starts (after the segment header), read from the sound file."""
    data = segment.read_bytes()
    offsets, at = [], 12
    while at < len(data):
        offsets.append(at)
        length = int.from_bytes(data[at + 13 : at + 17], "little")
        at += 25 + length
    return offsets


def test_damage_in_the_middle_of_the_newest_segment_loses_only_the_damaged_entry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = IngestLog(tmp_path / "log")
    for i in range(10):
        log.append("traces", b"request-%d" % i * 20)
    log.close()
    (segment,) = (tmp_path / "log").glob("*.log")
    offsets = _entry_offsets(segment)
    _flip(segment, offsets[4] + 40)  # inside the fifth entry's payload

    again = IngestLog(tmp_path / "log")
    assert again.last_seq == 10  # nothing cut off: the damage is not a torn tail
    assert [seq for seq, _, _ in _payloads(again)] == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    (damage,) = again.damage
    assert (damage.segment, damage.offset, damage.entries) == (segment.name, offsets[4], 1)
    assert damage.first_seq == 5
    aside = tmp_path / "log" / "damaged" / f"{segment.stem}-{offsets[4]}.bin"
    assert damage.aside == str(aside)
    assert aside.read_bytes() == segment.read_bytes()[offsets[4] : offsets[5]]
    assert f"{segment} is damaged at byte {offsets[4]}" in caplog.text
    assert "1 acknowledged request(s) from sequence 5 cannot be landed" in caplog.text
    assert again.append("traces", b"next") == 11
    again.close()


def test_damage_in_an_older_segment_lands_the_rest_and_is_reported(tmp_path: Path) -> None:
    log = IngestLog(tmp_path / "log", segment_bytes=1)  # one entry per segment
    for payload in (b"alpha", b"bravo", b"charlie"):
        log.append("logs", payload)
    log.close()
    first = sorted((tmp_path / "log").glob("*.log"))[0]
    _flip(first, -1)  # bit rot in the payload: the CRC no longer matches
    again = IngestLog(tmp_path / "log")
    assert _payloads(again) == [(2, "logs", b"bravo"), (3, "logs", b"charlie")]
    (damage,) = again.damage_report()
    assert damage["segment"] == first.name
    assert (damage["offset"], damage["entries"], damage["first_seq"]) == (12, 1, 1)
    assert Path(damage["aside"]).exists()
    again.close()


def test_damage_among_landed_entries_is_not_a_loss(tmp_path: Path) -> None:
    log = IngestLog(tmp_path / "log")
    for i in range(3):
        log.append("traces", b"x%d" % i)
    log.close()
    (segment,) = (tmp_path / "log").glob("*.log")
    _flip(segment, _entry_offsets(segment)[0] + 26)
    again = IngestLog(tmp_path / "log")
    assert [seq for seq, _, _ in _payloads(again, after=1)] == [2, 3]
    assert again.damage == []
    again.close()


def test_a_damaged_last_entry_is_damage_not_a_torn_tail(tmp_path: Path) -> None:
    # The whole entry is there, so its write finished and it was acknowledged.
    log = IngestLog(tmp_path / "log")
    for payload in (b"first", b"second", b"third"):
        log.append("traces", payload)
    log.close()
    (segment,) = (tmp_path / "log").glob("*.log")
    size = segment.stat().st_size
    _flip(segment, -2)
    again = IngestLog(tmp_path / "log")
    assert again.truncated_bytes == 0
    assert segment.stat().st_size == size
    assert [seq for seq, _, _ in _payloads(again)] == [1, 2]
    (damage,) = again.damage
    assert damage.entries is None  # nothing after it tells how many there were
    assert again.append("traces", b"after") == 3
    assert [seq for seq, _, _ in _payloads(again, after=2)] == [3]
    again.close()


def test_a_new_segment_cut_inside_its_header_is_a_torn_tail(tmp_path: Path) -> None:
    log = IngestLog(tmp_path / "log", segment_bytes=1)
    log.append("traces", b"one")
    log.append("traces", b"two")
    log.close()
    (tmp_path / "log" / f"{3:020d}.log").write_bytes(b"CTLGS")  # died in the first write
    again = IngestLog(tmp_path / "log")
    assert again.last_seq == 2
    assert [seq for seq, _, _ in _payloads(again)] == [1, 2]
    assert again.damage == []
    assert again.append("traces", b"three") == 3
    assert [seq for seq, _, _ in _payloads(again, after=2)] == [3]
    again.close()


def test_a_segment_of_the_first_format_is_still_replayed(tmp_path: Path) -> None:
    # Before segment headers and header checksums: entries `<IQBII` + payload from byte 0.
    import struct
    import zlib

    directory = tmp_path / "log"
    directory.mkdir()
    old = b"".join(
        struct.pack("<IQBII", 0x43544C47, seq, 1, len(p), zlib.crc32(p)) + p
        for seq, p in ((1, b"one"), (2, b"two"), (3, b"three"))
    )
    (directory / f"{1:020d}.log").write_bytes(old + b"GLTC\x04")  # and a torn tail
    log = IngestLog(directory)
    assert log.last_seq == 3
    assert log.truncated_bytes == 5
    assert _payloads(log) == [(1, "traces", b"one"), (2, "traces", b"two"), (3, "traces", b"three")]
    assert log.append("logs", b"four") == 4  # in a new segment of the current format
    assert [seq for seq, _, _ in _payloads(log)] == [1, 2, 3, 4]
    log.close()


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


def test_a_collector_lands_what_survives_damage_and_reports_it_on_health(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import httpx
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    from usage_db import LiveCollector

    from comptroller.collector import Collector

    from .helpers import log_records, usage_event

    db = tmp_path / "usage.duckdb"
    Collector(db).close()
    # Ten acknowledged requests the collector died before landing.
    log = IngestLog(tmp_path / "usage.duckdb.ingest")
    for i in range(10):
        request = encode_logs(log_records([usage_event(f"u{i}")]))
        log.append("logs", request.SerializeToString())
    log.close()
    (segment,) = (tmp_path / "usage.duckdb.ingest").glob("*.log")
    offsets = _entry_offsets(segment)
    _flip(segment, (offsets[5] + offsets[6]) // 2)  # in the middle of the file
    damaged = segment.read_bytes()[offsets[5] : offsets[6]]

    server = LiveCollector(db)
    try:
        landed = server.collector.con.execute("select usage_id from llm_usage").fetchall()
        assert sorted(u for (u,) in landed) == [f"u{i}" for i in range(10) if i != 5]
        health = httpx.get(f"{server.url}/health", timeout=10).json()
    finally:
        server.stop()
    assert health["status"] == "damaged"
    (damage,) = health["ingest_log_damage"]
    assert damage["segment"] == segment.name
    assert (damage["offset"], damage["entries"], damage["first_seq"]) == (offsets[5], 1, 6)
    assert Path(damage["aside"]).read_bytes() == damaged
    assert f"{segment} is damaged at byte {offsets[5]}" in caplog.text


def test_a_wrong_length_in_a_first_format_header_is_damage_not_a_torn_tail(
    tmp_path: Path,
) -> None:
    # Format 1 has no header checksum: a length pointing past the end looks like a torn
    # write, but a sound entry after it shows the write finished.
    import struct
    import zlib

    directory = tmp_path / "log"
    directory.mkdir()
    entries = [
        struct.pack("<IQBII", 0x43544C47, seq, 2, len(p), zlib.crc32(p)) + p
        for seq, p in ((1, b"one"), (2, b"two"), (3, b"three"))
    ]
    second = bytearray(entries[1])
    second[13:17] = (1 << 30).to_bytes(4, "little")
    (directory / f"{1:020d}.log").write_bytes(entries[0] + bytes(second) + entries[2])
    log = IngestLog(directory)
    assert log.truncated_bytes == 0
    assert log.last_seq == 3
    assert _payloads(log) == [(1, "logs", b"one"), (3, "logs", b"three")]
    (damage,) = log.damage
    assert (damage.offset, damage.entries, damage.first_seq) == (len(entries[0]), 1, 2)
    log.close()
