"""The token vault on a real PostgreSQL, and the shared reader with a real ``MaskStage`` whose
vault is down for a while: nothing is handed on until the vault holds every token, then every
event reaches every branch exactly once, masked."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from cdcd.flow import SharedReader
from cdcd.flow.retry import RetryPolicy
from cdcd.masking.plan import ColumnRule, TablePlan
from cdcd.masking.stage import MaskStage
from cdcd.masking.vault import MaskingUnavailable, TokenVault
from tests.e2e.compare import pg_connect
from tests.e2e.test_masking_e2e import Proxy
from tests.integration.test_pipeline import GROUP, MemorySink, batch, ev
from tests.integration.test_shared_reader import LiveLog, Modes, branch, run_all

KEY = bytes.fromhex("ab" * 32)


async def test_vault_round_trip(pg_dsn: str) -> None:
    vault = TokenVault(pg_dsn, KEY, table="vault_t.tokens")
    try:
        tok = vault.token("MRN-1", "phi")
        assert re.fullmatch(r"tok_[0-9a-f]{32}", tok) and vault.token("MRN-1", "phi") == tok
        assert vault.token("MRN-2", "phi") != tok
        await vault.settle()
        assert vault.pending == 0
        assert await vault.reveal(tok) == "MRN-1"
        assert await vault.reveal("tok_" + "0" * 32) is None
        conn = await pg_connect(pg_dsn)
        try:
            rows = await conn.fetch("SELECT token, class, sealed FROM vault_t.tokens ORDER BY token")
        finally:
            await conn.close()
        assert {r["token"] for r in rows} == {tok, vault.token("MRN-2", "phi")}
        assert all(b"MRN" not in bytes(r["sealed"]) and r["class"] == "phi" for r in rows)
    finally:
        await vault.aclose()
    other = TokenVault(pg_dsn, bytes.fromhex("cd" * 32), table="vault_t.tokens")
    try:
        with pytest.raises(ValueError, match="does not open"):
            await other.reveal(tok)
    finally:
        await other.aclose()


@pytest.fixture
async def proxy(pg_dsn: str) -> AsyncIterator[tuple[Proxy, str]]:
    u = urlsplit(pg_dsn)
    p = Proxy((u.hostname or "127.0.0.1", u.port or 5432))
    try:
        yield p, pg_dsn.replace(f"{u.hostname}:{u.port}", f"127.0.0.1:{p.port}")
    finally:
        await p.stop()


async def test_nothing_is_handed_on_while_the_vault_is_down(stores: Any, proxy: tuple[Proxy, str]) -> None:
    server, dsn = proxy
    vault = TokenVault(dsn, KEY, timeout=2.0)
    plan = TablePlan(
        "ks.t", columns={"v": ColumnRule(strategy="tokenize")}, fields={}, rules=[], hash_key=None,
        tokenize=vault.token,
    )  # fmt: skip
    states: list[bool] = []
    stage = MaskStage(plan, vault=vault, on_settled=lambda ok, _err: states.append(ok))
    log, modes = LiveLog(), Modes()
    for n in range(1, 21):
        log.append(batch(n, ev(n, v=f"secret-{n}")))
    log.close()
    sinks = {d: MemorySink() for d in ("pg", "ch")}
    branches = [branch(d, s, log, stores, modes) for d, s in sinks.items()]
    shared = SharedReader(
        group=GROUP, source=log.reader("shared"), stages=[stage], expected=2, detach_after=5.0,
        retry=RetryPolicy(initial=0.05, max=0.1),
    )  # fmt: skip
    running = asyncio.ensure_future(run_all(shared, branches))
    try:
        async with asyncio.timeout(20):
            while len(states) < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert not any(states) and vault.pending >= 1
        assert all(not s.applied for s in sinks.values())
        assert isinstance(shared.last_error, str) and "token vault" in shared.last_error
        await server.start()
        await asyncio.wait_for(running, 30)
    finally:
        running.cancel()
        await vault.aclose()
    expected = {n: vault.token(f"secret-{n}", "pii") for n in range(1, 21)}
    for d, sink in sinks.items():
        got = {e.key["id"]: e.values["v"] for e in sink.applied}
        assert got == expected, d
        assert sorted(sink.ids()) == list(range(1, 21)), d  # each exactly once
    check = TokenVault(dsn, KEY)
    try:
        assert await check.reveal(expected[7]) == "secret-7"
    finally:
        await check.aclose()
    with pytest.raises(MaskingUnavailable):
        await server.stop()
        down = TokenVault(dsn, KEY, timeout=1.0)
        down.token("x", "pii")
        await down.settle()


async def test_a_cancelled_settle_keeps_its_entries_pending() -> None:
    """A write cancelled mid-way (shutdown) must not lose what another caller noted meanwhile."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, never answers: the connect hangs

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    vault = TokenVault(f"postgresql://u@127.0.0.1:{port}/db", KEY, timeout=30.0)
    try:
        tok = vault.token("MRN-9", "phi")
        writing = asyncio.ensure_future(vault.settle())
        await asyncio.sleep(0.3)
        assert vault.pending == 1  # in flight
        writing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writing
        assert vault.pending == 1 and vault._pending == {tok: ("MRN-9", "phi")}
    finally:
        server.close()
        await vault.aclose()
