"""A single-node ScyllaDB emulator with CDC, speaking CQL native protocol v4 to the real driver.

See README.md in this directory. ``EmulatorServer`` is the entry point; ``python -m
tests.scylla_emulator`` runs one from the command line.
"""

from tests.scylla_emulator.server import EmulatorServer

__all__ = ["EmulatorServer"]
