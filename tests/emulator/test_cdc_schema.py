"""Log table schema, ``WITH cdc`` options, the ``cdc`` schema extension and stream generations
(shared/docs/scylla-cdc.md §1.2, §3.1, §4)."""

from __future__ import annotations

import datetime
import random
import struct

import pytest
from cassandra.shard_info import _ShardingInfo

from cdcd.schema import parse_cdc_extension
from tests.emulator.test_cdc_transform import table
from tests.scylla_emulator.api import CqlError, ErrorCode
from tests.scylla_emulator.cdc import LOG_SUFFIX, cdc_extension_blob, log_table_def, parse_cdc_options
from tests.scylla_emulator.generations import Generations, shard_of, stream_token
from tests.scylla_emulator.model import CdcTableOptions, ColumnDef, TableDef

NOW_MS = 1_700_000_000_000


def cols(t: TableDef) -> list[tuple[str, str, str]]:
    return [(c.name, c.type, c.kind) for c in t.columns]


def test_log_table_of_docs_example() -> None:
    base = table("pk1 int pk, pk2 int pk, ck1 int ck, ck2 int ck, v int, vs int static")
    log = log_table_def(base)
    assert (log.keyspace, log.name, log.is_cdc_log, log.default_ttl) == ("ks", "t" + LOG_SUFFIX, True, 0)
    assert sorted(cols(log)) == sorted(
        [
            ("cdc$stream_id", "blob", "partition_key"),
            ("cdc$time", "timeuuid", "clustering"),
            ("cdc$batch_seq_no", "int", "clustering"),
            ("cdc$operation", "tinyint", "regular"),
            ("cdc$ttl", "bigint", "regular"),
            ("cdc$end_of_batch", "boolean", "regular"),
            ("pk1", "int", "regular"),
            ("pk2", "int", "regular"),
            ("ck1", "int", "regular"),
            ("ck2", "int", "regular"),
            ("v", "int", "regular"),
            ("cdc$deleted_v", "boolean", "regular"),
            ("vs", "int", "regular"),  # static columns are not static in the log
            ("cdc$deleted_vs", "boolean", "regular"),
        ]
    )
    assert [(c.name, c.position, c.clustering_order) for c in log.clustering_key] == [
        ("cdc$time", 0, "asc"),
        ("cdc$batch_seq_no", 1, "asc"),
    ]
    assert log.options["comment"] == "CDC log for ks.t"
    assert log.options["gc_grace_seconds"] == 0
    assert log.options["compaction"]["compaction_window_size"] == "60"
    assert log.options["compaction"]["expired_sstable_check_frequency_seconds"] == "1800"


def test_log_columns_of_non_frozen_types() -> None:
    base = table(
        "pk int pk, m map<int, text>, s set<text>, l list<int>, u ut, fm frozen<map<int, int>>, "
        "tp tuple<int, text>, vec vector<float, 3>"
    )
    got = {n: ty for n, ty, _k in cols(log_table_def(base))}
    assert got["m"] == "frozen<map<int, text>>"
    assert got["cdc$deleted_elements_m"] == "frozen<set<int>>"
    assert got["s"] == "frozen<set<text>>"
    assert got["cdc$deleted_elements_s"] == "frozen<set<text>>"
    assert got["l"] == "frozen<map<timeuuid, int>>"
    assert got["cdc$deleted_elements_l"] == "frozen<set<timeuuid>>"
    assert got["u"] == "frozen<ut>"
    assert got["cdc$deleted_elements_u"] == "frozen<set<smallint>>"
    for atomic in ("fm", "tp", "vec"):
        assert f"cdc$deleted_{atomic}" in got
        assert f"cdc$deleted_elements_{atomic}" not in got
    assert got["fm"] == "frozen<map<int, int>>" and got["vec"] == "vector<float, 3>"
    assert "cdc$deleted_pk" not in got


def test_counters_and_nested_logs_are_rejected() -> None:
    with pytest.raises(CqlError) as e:
        log_table_def(table("pk int pk, c counter"))
    assert (e.value.code, e.value.message) == (
        ErrorCode.INVALID,
        "Cannot create CDC log for table ks.t. Counter support not implemented",
    )
    log = log_table_def(table("pk int pk, v int"))
    with pytest.raises(CqlError, match="creating nested CDC logs is not allowed"):
        log_table_def(log)


def test_log_without_ttl_keeps_gc_grace() -> None:
    log = log_table_def(table("pk int pk, v int", CdcTableOptions(enabled=True, ttl=0)))
    assert "gc_grace_seconds" not in log.options


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"enabled": "true"}, CdcTableOptions(enabled=True)),
        ({"ENABLED": "1", "preimage": "FULL"}, CdcTableOptions(enabled=True, preimage="full")),
        ({"enabled": "true", "preimage": "1", "postimage": "true"}, CdcTableOptions(True, "true", True)),
        ({"enabled": "false", "delta": "keys", "ttl": "0"}, CdcTableOptions(False, delta="keys", ttl=0)),
        ({"enabled": "true", "ttl": "10abc"}, CdcTableOptions(enabled=True, ttl=10)),  # std::stoi
        ({"enabled": "true", "enable_requested": "false"}, CdcTableOptions(enabled=True)),
    ],
)
def test_parse_options(given: dict[str, str], expected: CdcTableOptions) -> None:
    assert parse_cdc_options(given) == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"enabled": "yes"}, 'Invalid value for CDC option "enabled": yes'),
        ({"preimage": "sometimes"}, 'Invalid value for CDC option "preimage": sometimes'),
        ({"postimage": "x"}, 'Invalid value for CDC option "postimage": x'),
        ({"delta": "half"}, 'Invalid value for CDC option "delta": half'),
        ({"ttl": "abc"}, 'Invalid value for CDC option "ttl": abc'),
        ({"ttl": "-1"}, "Invalid CDC option: ttl must be >= 0"),
        ({"ttl": "99999999999"}, "Invalid CDC option: ttl too large"),
        ({"Colour": "red"}, "Invalid CDC option: Colour"),
    ],
)
def test_parse_options_errors(given: dict[str, str], message: str) -> None:
    with pytest.raises(CqlError) as e:
        parse_cdc_options(given)
    assert (e.value.code, e.value.message) == (ErrorCode.CONFIG_ERROR, message)


def test_extension_blob() -> None:
    opts = CdcTableOptions(enabled=True, preimage="full", postimage=True, delta="keys", ttl=3600)
    blob = cdc_extension_blob(opts)
    entries = [
        ("delta", "keys"),
        ("enabled", "true"),
        ("postimage", "true"),
        ("preimage", "full"),
        ("ttl", "3600"),
    ]
    expected = struct.pack("<I", 5) + b"".join(
        struct.pack("<I", len(k)) + k.encode() + struct.pack("<I", len(v)) + v.encode() for k, v in entries
    )
    assert blob == expected
    parsed = parse_cdc_extension(blob)
    assert (parsed.enabled, parsed.preimage, parsed.postimage, parsed.delta, parsed.ttl) == (
        True,
        "full",
        True,
        "keys",
        3600,
    )


# ---------------------------------------------------------------------------------- generations


def gens(**kw: int) -> Generations:
    clock = {"now": NOW_MS}
    g = Generations(now_ms=lambda: clock["now"], rng=random.Random(7), **kw)
    g.clock = clock  # type: ignore[attr-defined]
    return g


def test_stream_ids_format_token_and_shard() -> None:
    g = gens(vnodes=8, shards=3)
    (gen,) = g.generations
    assert len(gen.ranges) == 8 and [r.end for r in gen.ranges] == sorted(g.node_tokens())
    info = _ShardingInfo(0, 3, "", "", 12, None, None)
    for idx, rng in enumerate(gen.ranges):
        start = gen.ranges[idx - 1].end
        assert len(rng.streams) == 3
        for shard, sid in enumerate(rng.streams):
            low = int.from_bytes(sid[8:], "big")
            assert (low & 0xF, (low >> 4) & 0x3FFFFF) == (1, idx)
            tok = stream_token(sid)
            assert info.shard_id_from_token(tok) == shard_of(tok, 3, 12) == shard
            assert (start < tok <= rng.end) if start < rng.end else (tok > start or tok <= rng.end)


def test_routing_by_token_and_shard() -> None:
    g = gens(vnodes=4, shards=2)
    (gen,) = g.generations
    r = random.Random(3)
    for _ in range(500):
        tok = r.randint(-(2**63), 2**63 - 1)
        sid = g.stream_for(tok, NOW_MS * 1000)
        ends = [x.end for x in gen.ranges]
        owner = next((x for x in gen.ranges if x.end >= tok), gen.ranges[0])
        assert sid == owner.streams[shard_of(tok, 2, 12)]
        assert shard_of(stream_token(sid), 2, 12) == shard_of(tok, 2, 12)
        assert ends == sorted(ends)


def test_new_generation_and_descriptions() -> None:
    g = gens(vnodes=4)
    first = g.description_mutations()
    assert [m.table for m in first] == ["cdc_streams_descriptions_v2", "cdc_generation_timestamps"]
    streams, stamp = first
    start = datetime.datetime(1970, 1, 1) + datetime.timedelta(milliseconds=NOW_MS - 1000)
    assert streams.partition_key == (start,) and stamp.partition_key == ("timestamps",)
    assert [r.clustering for r in stamp.rows] == [(start,)] and stamp.rows[0].marker is not None
    assert len(streams.rows) == 4
    assert {s for r in streams.rows for s in r.cells["streams"].value} == set(g.generations[0].streams)
    assert g.description_mutations() == []

    new_start = g.new_generation(30_000, vnodes=6)
    assert new_start == NOW_MS + 30_000 and len(g.node_tokens()) == 6
    second = g.description_mutations()
    assert [m.table for m in second] == ["cdc_streams_descriptions_v2", "cdc_generation_timestamps"]
    assert len(second[0].rows) == 6
    old, new = g.generations
    tok = 12345
    g.clock["now"] = new_start - 2000  # type: ignore[attr-defined]
    assert g.stream_for(tok, new_start * 1000 - 1) in old.streams
    assert g.stream_for(tok, new_start * 1000) in new.streams  # near future: already the new one
    g.clock["now"] = new_start + 10_000  # type: ignore[attr-defined]
    assert g.stream_for(tok, new_start * 1000) in new.streams
    assert not set(old.streams) & set(new.streams)
    # the old generation is no longer current: a write older than now - 5 s into it is refused
    with pytest.raises(CqlError, match='"from the past"'):
        g.stream_for(tok, new_start * 1000 - 1)


def test_new_generation_without_vnodes_keeps_tokens_and_renews_ids() -> None:
    g = gens(vnodes=4)
    g.new_generation(0)
    old, new = g.generations
    assert old.vnode_tokens == new.vnode_tokens and new.start_ms == NOW_MS
    assert [stream_token(s) for s in old.streams] == [stream_token(s) for s in new.streams]
    assert old.streams != new.streams


def test_write_before_first_generation_fails() -> None:
    g = gens(first_start_ms=NOW_MS + 3000)
    with pytest.raises(CqlError) as e:
        g.stream_for(0, NOW_MS * 1000)
    assert e.value.code == ErrorCode.SERVER_ERROR and "could not find any CDC stream" in e.value.message


def test_single_vnode_owns_the_whole_ring() -> None:
    g = gens(vnodes=1, shards=4)
    (gen,) = g.generations
    assert [shard_of(stream_token(s), 4, 12) for s in gen.streams] == [0, 1, 2, 3]


def test_counter_column_check_uses_type_name() -> None:
    base = TableDef(
        "ks", "t", [ColumnDef("pk", "int", "partition_key"), ColumnDef("countx", "int", "regular")]
    )
    assert log_table_def(base).column("countx") is not None
