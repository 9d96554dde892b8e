"""``cdcd vault reveal TOKEN --config F``: print the original behind a token (needs the vault key
and the vault DSN of the config; nothing else can reveal a token)."""

from __future__ import annotations

import asyncio
import sys

from cdcd.config import Config
from cdcd.masking.config import key_bytes
from cdcd.masking.vault import MaskingUnavailable, TokenVault

__all__ = ["reveal"]


def reveal(cfg: Config, token: str) -> int:
    """Exit code: 0 printed, 1 unknown token / vault unreachable / wrong key, 2 not configured."""
    m = cfg.masking
    key = key_bytes(m.vault_key)
    if key is None or m.vault_dsn is None or not m.vault_dsn.get():
        print("cdcd: masking.vault_key and masking.vault_dsn are needed to reveal a token", file=sys.stderr)
        return 2
    vault = TokenVault(m.vault_dsn.get(), key, table=m.vault_table)

    async def run() -> str | None:
        try:
            return await vault.reveal(token)
        finally:
            await vault.aclose()

    try:
        original = asyncio.run(run())
    except (MaskingUnavailable, ValueError) as exc:
        print(f"cdcd: {exc}", file=sys.stderr)
        return 1
    if original is None:
        print(f"cdcd: no token {token} in the vault {m.vault_table}", file=sys.stderr)
        return 1
    print(original)
    return 0
