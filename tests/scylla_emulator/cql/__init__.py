"""CQL front end of the emulator: ``lexer`` (tokens), ``ast`` (nodes), ``parser`` (``parse``)."""

from tests.scylla_emulator.cql.parser import parse, unsupported

__all__ = ["parse", "unsupported"]
