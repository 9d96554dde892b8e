"""The token vault: originals of ``tokenize``-d values, encrypted, in a PostgreSQL table.

* A token is deterministic: ``"tok_"`` + the first 32 hex digits of HMAC-SHA-256 of the value's
  canonical text (``cdcd.masking.canonical``), keyed with a key derived from ``vault_key``
  (HMAC-SHA-256(vault_key, "cdcd token key v1")). The same value gives the same token in every
  table and destination; without the vault key nobody can compute or test one.
* The original (its canonical text, UTF-8) is sealed with AES-256-GCM under ``vault_key``: a
  random 96-bit nonce, the token as associated data (a row copied to another token does not
  open), stored as ``nonce || ciphertext+tag`` in ``sealed``.
* ``token()`` is synchronous and only notes what is new; ``settle()`` writes every noted entry
  (``INSERT .. ON CONFLICT DO NOTHING``, one round trip) and returns only when they are stored.
  The reader awaits it before it hands a batch to any destination, so every token a
  destination holds resolves. ``settle()`` is serialised by a lock: a caller that finds nothing
  pending still waits for a write in flight that may hold its entries.
* Any failure to reach or write the vault raises ``MaskingUnavailable`` (retriable); the entries
  stay pending and nothing was handed on.

Table (created when missing)::

    CREATE TABLE <vault_table> (token text PRIMARY KEY, class text NOT NULL,
                                sealed bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now())
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
from collections import OrderedDict
from typing import Any

from cdcd.errors import CdcdError

__all__ = ["MaskingUnavailable", "TokenVault", "derive_token"]

_TOKEN_KEY_INFO = b"cdcd token key v1"


class MaskingUnavailable(CdcdError):
    """The hash key or the token vault cannot be used: the table stops and writes nothing in
    clear until it can (retriable)."""

    retriable = True


def derive_token(token_key: bytes, canonical: str) -> str:
    return "tok_" + hmac.new(token_key, canonical.encode(), hashlib.sha256).hexdigest()[:32]


def _quote(table: str) -> str:
    schema, _, name = table.partition(".")
    return f'"{schema}"."{name}"'


class TokenVault:
    """Tokens and the encrypted originals behind them. One per process, shared by every table."""

    def __init__(
        self,
        dsn: str,
        vault_key: bytes,
        *,
        table: str = "cdcd_vault.tokens",
        timeout: float = 10.0,
        remember: int = 200_000,
    ) -> None:
        if len(vault_key) != 32:
            raise ValueError("the vault key must be 32 bytes")
        self._dsn = dsn
        self._key = vault_key
        self._token_key = hmac.new(vault_key, _TOKEN_KEY_INFO, hashlib.sha256).digest()
        self.table = table
        self._qtable = _quote(table)
        self.timeout = timeout
        self._remember = remember
        self._known: OrderedDict[str, None] = OrderedDict()  # tokens known to be stored (bounded)
        self._pending: dict[str, tuple[str, str]] = {}  # token -> (canonical text, class)
        self._writing: dict[str, tuple[str, str]] = {}  # what the settle() in flight is storing
        self._lock = asyncio.Lock()
        self._pool: Any = None
        self.last_error: str | None = None

    # ------------------------------------------------------------------------------ tokens
    def token(self, canonical: str, cls: str) -> str:
        """The token of a value; notes its original for the next ``settle()`` unless stored."""
        tok = derive_token(self._token_key, canonical)
        if tok not in self._known and tok not in self._pending:
            self._pending[tok] = (canonical, cls)
        return tok

    @property
    def pending(self) -> int:
        """Originals not stored yet (noted, or being written)."""
        return len(self._pending) + len(self._writing)

    def seal(self, token: str, plaintext: str) -> bytes:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = os.urandom(12)
        return nonce + AESGCM(self._key).encrypt(nonce, plaintext.encode(), token.encode())

    def open(self, token: str, sealed: bytes) -> str:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            return AESGCM(self._key).decrypt(sealed[:12], sealed[12:], token.encode()).decode()
        except InvalidTag:
            raise ValueError(f"the vault key does not open {token} (wrong vault_key?)") from None

    # ---------------------------------------------------------------------------- storage
    async def settle(self) -> None:
        """Store every pending original; raises ``MaskingUnavailable`` (they stay pending)."""
        async with self._lock:
            if not self._pending:
                return
            batch = self._writing = self._pending
            self._pending = {}
            try:
                rows = [(tok, cls, self.seal(tok, text)) for tok, (text, cls) in batch.items()]
                pool = await self._connect()
                await asyncio.wait_for(
                    pool.execute(
                        f"INSERT INTO {self._qtable} (token, class, sealed) "
                        "SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) "
                        "ON CONFLICT (token) DO NOTHING",
                        [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                    ),
                    self.timeout,
                )  # fmt: skip
            except BaseException as exc:
                for tok, entry in batch.items():  # (also when cancelled: another caller may need them)
                    self._pending.setdefault(tok, entry)
                if not isinstance(exc, Exception):
                    raise
                self.last_error = f"token vault: {type(exc).__name__}: {exc}"
                await self._drop_pool()
                raise MaskingUnavailable(self.last_error) from None
            finally:
                self._writing = {}
            self.last_error = None
            for tok in batch:
                self._known[tok] = None
            while len(self._known) > self._remember:
                self._known.popitem(last=False)

    async def reveal(self, token: str) -> str | None:
        """The original behind ``token`` (None when the vault has no such token)."""
        try:
            pool = await self._connect()
            sealed = await asyncio.wait_for(
                pool.fetchval(f"SELECT sealed FROM {self._qtable} WHERE token = $1", token), self.timeout
            )
        except Exception as exc:
            raise MaskingUnavailable(f"token vault: {type(exc).__name__}: {exc}") from None
        return None if sealed is None else self.open(token, bytes(sealed))

    async def _connect(self) -> Any:
        if self._pool is not None:
            return self._pool
        import asyncpg

        pool = await asyncio.wait_for(
            asyncpg.create_pool(self._dsn, min_size=0, max_size=2, command_timeout=self.timeout),
            self.timeout,
        )
        try:
            schema = self.table.partition(".")[0]
            for stmt in (
                f'CREATE SCHEMA IF NOT EXISTS "{schema}"',
                f"CREATE TABLE IF NOT EXISTS {self._qtable} (token text PRIMARY KEY, class text NOT NULL, "
                "sealed bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
            ):
                with contextlib.suppress(asyncpg.UniqueViolationError):  # another replica, at the same time
                    await pool.execute(stmt)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        return pool

    async def _drop_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 2.0)
            except Exception:
                pool.terminate()

    async def aclose(self) -> None:
        await self._drop_pool()
