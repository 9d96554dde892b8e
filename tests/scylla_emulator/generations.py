"""CDC streams and generations of the emulated single vnode node (shared/docs/scylla-cdc.md §4).

A generation is a sorted list of token ranges ``(prev_end, range_end]``, one per vnode; each range
has one stream per shard. Stream ids use Scylla's binary format (§4.1, ``cdc/generation.cc``):
bytes 0..7 the stream's token (big-endian int64), bytes 8..15 a big-endian "low qword" with the
version (1) in bits 0..3, the vnode index in bits 4..25 and 38 random bits above. A stream's token is
the first token of its range owned by its shard (``find_first_token_for_shard``), so base and log
partitions are colocated exactly as in Scylla.

Routing (``cdc/metadata.cc::get_vnode_stream``): a write with timestamp T uses the newest generation
whose start is <= T; within it the first range with ``range_end >= token`` (wrapping to the first
range), then ``streams[shard_of(token)]``. T more than 5 s ahead of the clock is rejected ("from the
future"); a T at least 5 s old is accepted only if it falls inside the generation operating at
``now - 5 s`` and that generation is still current ("from the past").

Publication (``system_distributed_keyspace.cc::create_cdc_desc``): ``description_mutations()`` hands
out the ``cdc_streams_descriptions_v2`` rows of every not-yet-published generation first, then its
``cdc_generation_timestamps`` row.
"""

from __future__ import annotations

import datetime
import random
import struct
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass

from cassandra.murmur3 import murmur3

from .api import CqlError, ErrorCode
from .model import AtomicCell, PartitionMutation, RowMutation

__all__ = [
    "GENERATION_LEEWAY_US",
    "Generation",
    "Generations",
    "TokenRange",
    "format_timestamp",
    "make_stream_id",
    "shard_of",
    "stream_token",
]

GENERATION_LEEWAY_US = 5_000_000  # cdc/generation.cc::get_generation_leeway
# cdc/metadata.cc texts (note the double space before "with the database's clocks" in _FUTURE)
_FUTURE = (
    'cdc: attempted to get a stream "from the future" ({}; current server time: {}).'
    " With CDC you cannot send writes with timestamps arbitrarily into the future, because we don't"
    " know what streams will be used at that time.\n"
    "We *do* allow sending writes into the near future, but our ability to do that is limited."
    " If you really must use your own timestamps, then make sure your clocks are well-synchronized"
    "  with the database's clocks."
)
_PAST = (
    'cdc: attempted to get a stream "from the past" ({}; current server time: {}).'
    " With CDC you cannot send writes with timestamps too far into the past, because that would break"
    " consistency properties.\n"
    "We *do* allow sending writes into the near past, but our ability to do that is limited."
    " Are you using client-side timestamps? Make sure your clocks are well-synchronized"
    " with the database's clocks."
)
_NO_STREAM = (
    "cdc::metadata::get_stream: could not find any CDC stream for timestamp {}."
    " Are we in the middle of a cluster upgrade?"
)
_MIN_TOKEN = -(2**63)
_MAX_TOKEN = 2**63 - 1
_U64 = 2**64
_VERSION_BITS, _INDEX_BITS, _RANDOM_BITS = 4, 22, 38


def _unbias(token: int) -> int:
    return (token + 2**63) % _U64


def _bias(n: int) -> int:
    return n - 2**63


def _zero_based_shard_of(n: int, shards: int, ignore_msb: int) -> int:
    return (((n << ignore_msb) % _U64) * shards) >> 64


def shard_of(token: int, shards: int, ignore_msb: int) -> int:
    """Scylla's shard of a Murmur3 token (``dht/token.cc::shard_of``; the driver's
    ``ShardingInfo.shard_id_from_token`` computes the same)."""
    return _zero_based_shard_of(_unbias(token), shards, ignore_msb)


def _shard_starts(shards: int, ignore_msb: int) -> list[int]:
    # dht/token.cc::init_zero_based_shard_start
    if shards == 1:
        return [0]
    out = []
    for s in range(shards):
        n = ((s << 64) // shards) >> ignore_msb
        while _zero_based_shard_of(n, shards, ignore_msb) != s:
            n += 1
        out.append(n)
    return out


def _token_for_next_shard(token: int, shard: int, shards: int, ignore_msb: int) -> int:
    """dht/token.cc::token_for_next_shard with spans = 1; ``_MAX_TOKEN + 1`` means "maximum token"."""
    n = _unbias(token)
    s = _zero_based_shard_of(n, shards, ignore_msb)
    start = _shard_starts(shards, ignore_msb)[shard]
    if ignore_msb == 0:
        if shard <= s:
            return _MAX_TOKEN + 1
        return _bias(start)
    left = (n >> (64 - ignore_msb)) + 1 - int(shard > s)
    if left >= (1 << ignore_msb):
        return _MAX_TOKEN + 1
    return _bias((left << (64 - ignore_msb)) | start)


def _first_token_in(start: int, end: int, shard: int, shards: int, ignore_msb: int) -> int:
    # non-wrapping (start, end]
    t = start + 1
    if shard_of(t, shards, ignore_msb) != shard:
        t = _token_for_next_shard(t, shard, shards, ignore_msb)
    return min(t, end)


def _first_token_for_shard(start: int, end: int, shard: int, shards: int, ignore_msb: int) -> int:
    """dht/token.cc::find_first_token_for_shard over the range (start, end] (may wrap)."""
    if start < end:
        return _first_token_in(start, end, shard, shards, ignore_msb)
    if start != _MAX_TOKEN:
        t = _first_token_in(start, _MAX_TOKEN + 1, shard, shards, ignore_msb)
        if t <= _MAX_TOKEN:
            return t
    return _first_token_in(_MIN_TOKEN, end, shard, shards, ignore_msb)


def make_stream_id(token: int, vnode_index: int, rng: random.Random) -> bytes:
    """A version-1 stream id (cdc/generation.cc::stream_id::stream_id)."""
    low = (
        (1 & 0xF)
        | ((vnode_index & ((1 << _INDEX_BITS) - 1)) << _VERSION_BITS)
        | ((rng.getrandbits(64) & ((1 << _RANDOM_BITS) - 1)) << (_VERSION_BITS + _INDEX_BITS))
    )
    return struct.pack(">qQ", token, low)


def stream_token(stream_id: bytes) -> int:
    """Token of a log partition (CDCPartitioner): first 8 bytes big-endian signed; min token if
    the id is not 16 bytes long."""
    if len(stream_id) != 16:
        return _MIN_TOKEN
    token: int = struct.unpack(">q", stream_id[:8])[0]
    return token


def format_timestamp(ts_us: int) -> str:
    """clocks-impl.cc::format_timestamp: ``%Y/%m/%d %H:%M:%S`` in UTC (whole seconds)."""
    when = datetime.datetime(1970, 1, 1) + datetime.timedelta(microseconds=ts_us)
    return when.strftime("%Y/%m/%d %H:%M:%S")


def _ms_to_datetime(ms: int) -> datetime.datetime:
    return datetime.datetime(1970, 1, 1) + datetime.timedelta(milliseconds=ms)


@dataclass(frozen=True)
class TokenRange:
    end: int  # range_end token (inclusive)
    streams: tuple[bytes, ...]  # one per shard, index = shard id


@dataclass(frozen=True)
class Generation:
    start_ms: int
    ranges: tuple[TokenRange, ...]  # sorted by end
    vnode_tokens: tuple[int, ...]

    @property
    def streams(self) -> list[bytes]:
        return [s for r in self.ranges for s in r.streams]

    def range_of(self, token: int) -> TokenRange:
        i = bisect_left([r.end for r in self.ranges], token)
        return self.ranges[i if i < len(self.ranges) else 0]


class Generations:
    """All CDC generations of the emulated cluster (single node, ``shards`` shards)."""

    def __init__(
        self,
        *,
        vnodes: int = 16,
        shards: int = 2,
        ignore_msb: int = 12,
        now_ms: Callable[[], int],
        first_start_ms: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if vnodes < 1 or shards < 1:
            raise ValueError(f"vnodes and shards must be >= 1 (got vnodes={vnodes}, shards={shards})")
        self.shards = shards
        self.ignore_msb = ignore_msb
        self._now_ms = now_ms
        self._rng = rng or random.Random()
        self._gens: list[Generation] = []
        self._published = 0
        start = now_ms() - 1000 if first_start_ms is None else first_start_ms
        self._gens.append(self._make(start, self._random_tokens(vnodes)))

    # ------------------------------------------------------------------ construction
    def _random_tokens(self, n: int) -> tuple[int, ...]:
        tokens: set[int] = set()
        while len(tokens) < n:
            tokens.add(self._rng.randint(_MIN_TOKEN + 1, _MAX_TOKEN))
        return tuple(sorted(tokens))

    def _make(self, start_ms: int, tokens: tuple[int, ...]) -> Generation:
        # cdc/generation.cc::make_new_generation_description: range i is (tokens[i-1], tokens[i]],
        # range 0 wraps: (tokens[-1], tokens[0]].
        ranges = []
        for idx, end in enumerate(tokens):
            start = tokens[idx - 1] if idx else tokens[-1]
            if len(tokens) == 1:
                start = end  # the whole ring
            streams = tuple(
                make_stream_id(
                    _first_token_for_shard(start, end, shard, self.shards, self.ignore_msb), idx, self._rng
                )
                for shard in range(self.shards)
            )
            ranges.append(TokenRange(end, streams))
        return Generation(start_ms, tuple(ranges), tokens)

    # ------------------------------------------------------------------ queries
    @property
    def generations(self) -> list[Generation]:
        return list(self._gens)

    def node_tokens(self) -> list[int]:
        """The vnode tokens (system.local.tokens) of the newest generation."""
        return list(self._gens[-1].vnode_tokens)

    def generation_at(self, ts_us: int) -> Generation | None:
        """The generation operating at ``ts_us`` (newest with start <= ts), or None."""
        starts = [g.start_ms * 1000 for g in self._gens]
        i = bisect_right(starts, ts_us)
        return self._gens[i - 1] if i else None

    def stream_for(self, token: int, ts_us: int) -> bytes:
        """The stream owning ``token`` in the generation operating at ``ts_us``.

        Raises CqlError(INVALID) for a timestamp "from the future"/"from the past" and
        CqlError(SERVER_ERROR) when no generation operates at ``ts_us`` (cdc/metadata.cc).
        """
        now = self._now_ms() * 1000
        if ts_us > now + GENERATION_LEEWAY_US:
            raise CqlError(ErrorCode.INVALID, _FUTURE.format(format_timestamp(ts_us), format_timestamp(now)))
        if ts_us <= now - GENERATION_LEEWAY_US:
            cur = self.generation_at(now - GENERATION_LEEWAY_US)
            later = [g for g in self._gens if cur is not None and g.start_ms > cur.start_ms]
            is_previous = bool(later) and later[0].start_ms * 1000 <= now
            if cur is None or ts_us < cur.start_ms * 1000 or is_previous:
                raise CqlError(
                    ErrorCode.INVALID, _PAST.format(format_timestamp(ts_us), format_timestamp(now))
                )
        gen = self.generation_at(ts_us)
        if gen is None:
            raise CqlError(ErrorCode.SERVER_ERROR, _NO_STREAM.format(format_timestamp(ts_us)))
        rng = gen.range_of(token)
        return rng.streams[shard_of(token, len(rng.streams), self.ignore_msb)]

    # ------------------------------------------------------------------ changes
    def new_generation(self, delay_ms: int, vnodes: int | None = None) -> int:
        """Publish a generation that starts operating at ``now + delay_ms`` (at least 1 ms after the
        newest one). ``vnodes`` picks new random vnode tokens; None keeps the current tokens (new
        stream ids all the same, like ``nodetool checkAndRepairCdcStreams``). Returns the start (ms)."""
        start = max(self._now_ms() + delay_ms, self._gens[-1].start_ms + 1)
        tokens = self._random_tokens(vnodes) if vnodes is not None else self._gens[-1].vnode_tokens
        self._gens.append(self._make(start, tokens))
        return start

    def description_mutations(self) -> list[PartitionMutation]:
        """Rows of ``system_distributed.cdc_streams_descriptions_v2`` then
        ``cdc_generation_timestamps`` for every generation not handed out yet (streams first)."""
        out: list[PartitionMutation] = []
        ts = self._now_ms() * 1000
        for gen in self._gens[self._published :]:
            when = _ms_to_datetime(gen.start_ms)
            rows = [
                RowMutation(clustering=(r.end,), cells={"streams": AtomicCell(ts, sorted(r.streams))})
                for r in gen.ranges
            ]
            out.append(
                PartitionMutation(
                    keyspace="system_distributed",
                    table="cdc_streams_descriptions_v2",
                    partition_key=(when,),
                    token=_murmur(struct.pack(">q", gen.start_ms)),
                    rows=rows,
                )
            )
            out.append(
                PartitionMutation(
                    keyspace="system_distributed",
                    table="cdc_generation_timestamps",
                    partition_key=("timestamps",),
                    token=_murmur(b"timestamps"),
                    rows=[RowMutation(clustering=(when,), marker=AtomicCell(ts))],
                )
            )
        self._published = len(self._gens)
        return out


def _murmur(key: bytes) -> int:
    token: int = murmur3(key)
    return _MAX_TOKEN if token == _MIN_TOKEN else token
