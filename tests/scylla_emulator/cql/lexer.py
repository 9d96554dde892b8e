"""Hand-written CQL tokenizer.

``tokenize(text)`` returns a list of ``Token``. Unquoted identifiers and keywords are lower-cased
(CQL is case-insensitive for them); double-quoted identifiers keep their case (``""`` escapes a
quote). Comments (``--``, ``//``, ``/* */``) and whitespace are skipped. Bad input raises
``CqlError(SYNTAX_ERROR)`` naming the offending text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tests.scylla_emulator.api import CqlError, ErrorCode

__all__ = ["Token", "tokenize"]

# Token kinds: ident, qident, string, int, float, uuid, hex, duration, bind, named_bind, sym, eof
_DURATION_UNIT = r"(?:y|mo|w|d|h|ms|us|µs|ns|m|s)"
_PATTERNS = [
    ("ws", r"\s+"),
    ("comment", r"--[^\n]*|//[^\n]*|/\*.*?\*/"),
    ("uuid", r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![\w-])"),
    ("hex", r"0[xX][0-9a-fA-F]*(?!\w)"),
    ("duration", rf"(?:\d+{_DURATION_UNIT})+(?![\w.])|P(?:\d+[YMDW])*(?:T(?:\d+[HMS])+)?(?!\w)"),
    ("float", r"(?:\d+\.\d*(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+)(?![\w.])"),
    ("int", r"\d+(?![\w.])"),
    ("string", r"'(?:[^']|'')*'|\$\$.*?\$\$"),
    ("qident", r'"(?:[^"]|"")+"'),
    ("named_bind", r":[A-Za-z_][A-Za-z0-9_]*"),
    ("bind", r"\?"),
    ("ident", r"[A-Za-z_][A-Za-z0-9_$]*"),
    ("sym", r"<=|>=|!=|==|<>|\+=|-=|[=<>(),;.*\[\]{}:+\-/%]"),
]
_MASTER = re.compile("|".join(f"(?P<{n}>{p})" for n, p in _PATTERNS), re.DOTALL)


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    value: str  # ident: lower-cased; qident: unquoted; string: unescaped; others: raw text
    pos: int

    def is_kw(self, *words: str) -> bool:
        return self.kind == "ident" and self.value in words


def tokenize(text: str) -> list[Token]:
    out: list[Token] = []
    pos = 0
    n = len(text)
    while pos < n:
        m = _MASTER.match(text, pos)
        if m is None or m.end() == pos:
            snippet = text[pos : pos + 20]
            raise CqlError(ErrorCode.SYNTAX_ERROR, f"line 1:{pos} token recognition error at: '{snippet}'")
        kind = m.lastgroup or ""
        raw = m.group()
        if kind in ("ws", "comment"):
            pass
        elif kind == "ident":
            out.append(Token("ident", raw.lower(), pos))
        elif kind == "qident":
            out.append(Token("qident", raw[1:-1].replace('""', '"'), pos))
        elif kind == "string":
            val = raw[2:-2] if raw.startswith("$$") else raw[1:-1].replace("''", "'")
            out.append(Token("string", val, pos))
        elif kind == "named_bind" and out and _ends_term(out[-1]):
            # ``{'enabled':true}``: after a map key ':' separates key and value (Scylla's grammar
            # has no named-bind token: a bind is ':' ident, read in context).
            out.append(Token("sym", ":", pos))
            out.append(Token("ident", raw[1:].lower(), pos + 1))
        elif kind == "named_bind":
            out.append(Token("named_bind", raw[1:].lower(), pos))
        elif kind == "duration" and raw.upper() == "P":
            out.append(Token("ident", raw.lower(), pos))
        else:
            out.append(Token(kind, raw, pos))
        pos = m.end()
    out.append(Token("eof", "", n))
    return out


_TERM_KINDS = frozenset({"string", "int", "float", "uuid", "hex", "duration", "bind", "named_bind", "qident"})


def _ends_term(tok: Token) -> bool:
    """``tok`` can end a map key, so a following ``:name`` is the key/value separator."""
    return tok.kind in _TERM_KINDS or (tok.kind == "sym" and tok.value in (")", "]", "}"))
