"""Roles and permissions in the emulator, through the real driver (``cassandra`` module).

The behaviour checked is Scylla's (service/client_state.cc, select_statement.cc,
modification_statement.cc, permission_altering_statement.cc, role-management-statements.cc;
test/cqlpy/test_permissions.py): a restricted role reads and writes exactly what is granted to it
or to a parent resource, gets ``Unauthorized`` (0x2100) with Scylla's message otherwise, reads
``system.local``/``system.peers``/``system_schema.*`` without a grant, and reads a CDC log through a
grant on its base table.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from typing import Any

import pytest
from cassandra import InvalidRequest, Unauthorized
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import Cluster, NoHostAvailable, Session
from cassandra.protocol import SyntaxException
from cassandra.query import BatchStatement

from tests.scylla_emulator import EmulatorServer

ADMIN = ("admin", "admin-pw")


def _message(text: str) -> str:
    """``pytest.raises(match=)`` for a server error whose message is exactly ``text``."""
    return 'message="' + re.escape(text) + '">?$'  # SyntaxException's str() is in <...>


def _containing(text: str) -> str:
    return re.escape(text)


_names = itertools.count()


def _connect(server: EmulatorServer, user: str, password: str) -> tuple[Cluster, Session]:
    cluster = Cluster(
        [server.host],
        port=server.port,
        protocol_version=4,
        auth_provider=PlainTextAuthProvider(user, password),
    )
    return cluster, cluster.connect()


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    with EmulatorServer("127.0.0.1", 0, vnodes=4, shards=1, credentials=ADMIN) as srv:
        yield srv


@pytest.fixture(scope="module")
def admin(server: EmulatorServer) -> Iterator[Session]:
    cluster, session = _connect(server, *ADMIN)
    session.execute(
        "CREATE KEYSPACE ks WITH replication = {'class': 'NetworkTopologyStrategy', 'datacenter1': 1}"
    )
    session.execute(
        "CREATE KEYSPACE other WITH replication = {'class': 'NetworkTopologyStrategy', 'datacenter1': 1}"
    )
    session.execute("CREATE TABLE ks.t (pk int PRIMARY KEY, v int) WITH cdc = {'enabled': true}")
    session.execute("CREATE TABLE ks.u (pk int PRIMARY KEY, v int)")
    session.execute("CREATE TABLE other.w (pk int PRIMARY KEY, v int)")
    for table in ("ks.t", "ks.u", "other.w"):
        session.execute(f"INSERT INTO {table} (pk, v) VALUES (1, 1)")
    try:
        yield session
    finally:
        cluster.shutdown()


class User:
    """A fresh login role with no grants and a session of its own."""

    def __init__(self, server: EmulatorServer, admin: Session) -> None:
        self.name = f"reader{next(_names)}"
        self.admin = admin
        admin.execute(f"CREATE ROLE {self.name} WITH PASSWORD = 'pw' AND LOGIN = true")
        self.cluster, self.session = _connect(server, self.name, "pw")

    def grant(self, what: str) -> None:
        self.admin.execute(f"GRANT {what} TO {self.name}")

    def revoke(self, what: str) -> None:
        self.admin.execute(f"REVOKE {what} FROM {self.name}")

    def denied(self, query: str, permission: str, resource: str) -> None:
        with pytest.raises(Unauthorized) as err:
            self.session.execute(query)
        message = f"User {self.name} has no {permission} permission on {resource} or any of its parents"
        assert str(err.value) == f'Error from server: code=2100 [Unauthorized] message="{message}"'


@pytest.fixture
def user(server: EmulatorServer, admin: Session) -> Iterator[User]:
    u = User(server, admin)
    try:
        yield u
    finally:
        u.cluster.shutdown()


def test_select_needs_a_grant_on_the_table_or_a_parent(user: User) -> None:
    user.denied("SELECT * FROM ks.u", "SELECT", "<table ks.u>")
    user.grant("SELECT ON TABLE ks.u")
    assert [tuple(r) for r in user.session.execute("SELECT pk, v FROM ks.u")] == [(1, 1)]
    user.denied("SELECT * FROM other.w", "SELECT", "<table other.w>")
    user.revoke("SELECT ON TABLE ks.u")
    user.denied("SELECT * FROM ks.u", "SELECT", "<table ks.u>")  # revoking acts on open sessions

    user.grant("SELECT ON KEYSPACE ks")
    assert len(list(user.session.execute("SELECT * FROM ks.u"))) == 1
    user.denied("SELECT * FROM other.w", "SELECT", "<table other.w>")
    user.grant("SELECT ON ALL KEYSPACES")
    assert len(list(user.session.execute("SELECT * FROM other.w"))) == 1
    # ... including system tables that are not readable by default
    assert {r.role for r in user.session.execute("SELECT role FROM system.roles")} >= {"admin", user.name}


def test_system_tables_every_role_reads(user: User) -> None:
    # service/client_state.cc readable_system_resources: system.local, system.peers, system_schema.*
    assert user.session.execute("SELECT release_version FROM system.local").one().release_version
    list(user.session.execute("SELECT * FROM system.peers"))
    tables = {
        (r.keyspace_name, r.table_name) for r in user.session.execute("SELECT * FROM system_schema.tables")
    }
    assert ("ks", "t_scylla_cdc_log") in tables
    list(user.session.execute("SELECT * FROM system_schema.scylla_keyspaces"))
    # The CDC generation tables need a grant, as do system.roles and the rest of system.
    for table in ("cdc_generation_timestamps", "cdc_streams_descriptions_v2"):
        user.denied(
            f"SELECT * FROM system_distributed.{table}", "SELECT", f"<table system_distributed.{table}>"
        )
        user.grant(f"SELECT ON system_distributed.{table}")
        assert list(user.session.execute(f"SELECT * FROM system_distributed.{table}"))
    user.denied("SELECT * FROM system.roles", "SELECT", "<table system.roles>")
    user.denied("SELECT * FROM system.peers_v2", "SELECT", "<table system.peers_v2>")


def test_cdc_log_is_read_through_the_base_tables_grant(user: User) -> None:
    # test/cqlpy/test_permissions.py::test_cdc_permissions_from_base (Scylla >= 2025.3.2)
    user.denied("SELECT * FROM ks.t_scylla_cdc_log", "SELECT", "<table ks.t>")
    user.grant("SELECT ON ks.t_scylla_cdc_log")  # accepted, no effect
    user.denied("SELECT * FROM ks.t_scylla_cdc_log", "SELECT", "<table ks.t>")
    user.grant("SELECT ON ks.t")
    assert [r.pk for r in user.session.execute("SELECT pk FROM ks.t_scylla_cdc_log")] == [1]
    assert [r.pk for r in user.session.execute("SELECT pk FROM ks.t")] == [1]


def test_cdc_log_checked_on_itself_in_the_older_mode(server: EmulatorServer, user: User) -> None:
    # Before scylladb PR #25797 (2025.3.2 / 2025.4.0) the log was checked like any table.
    server.call(setattr, server.engine.auth, "cdc_log_permissions", "log")
    try:
        user.grant("SELECT ON ks.t")
        user.denied("SELECT * FROM ks.t_scylla_cdc_log", "SELECT", "<table ks.t_scylla_cdc_log>")
        user.grant("SELECT ON ks.t_scylla_cdc_log")
        assert len(list(user.session.execute("SELECT * FROM ks.t_scylla_cdc_log"))) == 1
    finally:
        server.call(setattr, server.engine.auth, "cdc_log_permissions", "base")


def test_writes_need_modify_and_conditional_writes_also_select(user: User) -> None:
    user.denied("INSERT INTO ks.u (pk, v) VALUES (2, 2)", "MODIFY", "<table ks.u>")
    user.denied("UPDATE ks.u SET v = 3 WHERE pk = 1", "MODIFY", "<table ks.u>")
    user.denied("DELETE FROM ks.u WHERE pk = 1", "MODIFY", "<table ks.u>")
    user.denied("TRUNCATE ks.u", "MODIFY", "<table ks.u>")
    user.grant("SELECT ON ks.u")  # reading does not allow writing
    user.denied("INSERT INTO ks.u (pk, v) VALUES (2, 2)", "MODIFY", "<table ks.u>")
    user.revoke("SELECT ON ks.u")
    user.grant("MODIFY ON KEYSPACE ks")
    insert = user.session.prepare("INSERT INTO ks.u (pk, v) VALUES (?, ?)")  # PREPARE is not checked
    user.session.execute(insert, (2, 2))
    batch = BatchStatement()
    batch.add(insert, (3, 3))
    batch.add("UPDATE ks.u SET v = 4 WHERE pk = 3")
    user.session.execute(batch)
    # modification_statement::check_access: IF conditions also need SELECT
    user.denied("INSERT INTO ks.u (pk, v) VALUES (4, 4) IF NOT EXISTS", "SELECT", "<table ks.u>")
    user.grant("SELECT ON ks.u")
    assert user.session.execute("INSERT INTO ks.u (pk, v) VALUES (4, 4) IF NOT EXISTS").was_applied
    user.revoke("MODIFY ON KEYSPACE ks")
    with pytest.raises(Unauthorized, match=_containing("no MODIFY permission on <table ks.u>")):
        user.session.execute(insert, (5, 5))  # an already prepared statement is checked again
    batch = BatchStatement()
    batch.add(insert, (5, 5))
    with pytest.raises(Unauthorized, match=_containing("no MODIFY permission on <table ks.u>")):
        user.session.execute(batch)
    # system and system_schema take only SELECT/DESCRIBE from non-superusers, whatever is granted
    user.grant("MODIFY ON ALL KEYSPACES")
    with pytest.raises(
        Unauthorized,
        match=_message("system can be granted only SELECT or DESCRIBE permissions to a non-superuser."),
    ):
        user.session.execute("INSERT INTO system.roles (role) VALUES ('x')")


def test_schema_changes_need_create_alter_drop_and_creators_get_their_objects(user: User) -> None:
    ks = f"own{next(_names)}"
    user.denied(
        f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'NetworkTopologyStrategy', 'datacenter1': 1}}",
        "CREATE",
        "<all keyspaces>",
    )
    user.denied("CREATE TABLE ks.mine (pk int PRIMARY KEY)", "CREATE", "<keyspace ks>")
    user.denied("CREATE TYPE ks.mytype (a int)", "CREATE", "<keyspace ks>")
    user.session.execute("USE ks")  # needs nothing
    user.denied("ALTER TABLE ks.u WITH comment = 'x'", "ALTER", "<table ks.u>")
    user.denied("DROP TABLE ks.u", "DROP", "<table ks.u>")
    user.grant("CREATE ON KEYSPACE ks")
    user.session.execute("CREATE TABLE ks.mine (pk int PRIMARY KEY, v int) WITH cdc = {'enabled': true}")
    # auto-grant: the creator may use, alter and drop what it created (but no other table)
    user.session.execute("INSERT INTO ks.mine (pk, v) VALUES (1, 1)")
    assert len(list(user.session.execute("SELECT * FROM ks.mine_scylla_cdc_log"))) == 1
    user.session.execute("ALTER TABLE ks.mine WITH comment = 'mine'")
    user.denied("SELECT * FROM ks.u", "SELECT", "<table ks.u>")
    rows = user.admin.execute(
        f"SELECT resource, permissions FROM system.role_permissions WHERE role = '{user.name}'"
    )
    assert {r.resource: set(r.permissions) for r in rows} == {
        "data/ks": {"CREATE"},
        "data/ks/mine": {"ALTER", "AUTHORIZE", "DROP", "MODIFY", "SELECT"},
    }
    user.session.execute("DROP TABLE ks.mine")
    # auto-revoke: a new table of the same name starts without the old grants
    user.admin.execute("CREATE TABLE ks.mine (pk int PRIMARY KEY)")
    user.denied("SELECT * FROM ks.mine", "SELECT", "<table ks.mine>")
    user.admin.execute("DROP TABLE ks.mine")


def test_role_management(server: EmulatorServer, admin: Session, user: User) -> None:
    name = f"role{next(_names)}"
    admin.execute(f"CREATE ROLE {name} WITH PASSWORD = 'a' AND LOGIN = false")
    with pytest.raises(InvalidRequest, match=_message(f"Role {name} already exists.")):
        admin.execute(f"CREATE ROLE {name}")
    admin.execute(f"CREATE ROLE IF NOT EXISTS {name}")
    with pytest.raises(NoHostAvailable, match=_containing(f"{name} is not permitted to log in")):
        _connect(server, name, "a")
    with pytest.raises(NoHostAvailable, match=_containing("Username and/or password are incorrect")):
        _connect(server, name, "wrong")
    admin.execute(f"ALTER ROLE {name} WITH PASSWORD = 'b' AND LOGIN = true")
    cluster, session = _connect(server, name, "b")
    try:
        assert session.execute("SELECT key FROM system.local").one().key == "local"
        with pytest.raises(InvalidRequest, match=_message("Cannot DROP primary role for current login.")):
            session.execute(f"DROP ROLE {name}")
        session.execute(f"ALTER ROLE {name} WITH PASSWORD = 'c'")  # its own password: allowed
        with pytest.raises(
            Unauthorized, match=_message("Only superusers are allowed to alter superuser status.")
        ):
            session.execute(f"ALTER ROLE {name} WITH SUPERUSER = true")
    finally:
        cluster.shutdown()
    _connect(server, name, "c")[0].shutdown()
    row = admin.execute(f"SELECT can_login, is_superuser FROM system.roles WHERE role = '{name}'").one()
    assert (row.can_login, row.is_superuser) == (True, False)

    # A non-superuser manages no roles and grants nothing it does not hold with AUTHORIZE.
    with pytest.raises(
        Unauthorized,
        match=_message(f"User {user.name} has no CREATE permission on <all roles> or any of its parents"),
    ):
        user.session.execute("CREATE ROLE intruder")
    with pytest.raises(
        Unauthorized,
        match=_message(f"User {user.name} has no DROP permission on <role {name}> or any of its parents"),
    ):
        user.session.execute(f"DROP ROLE {name}")
    user.denied(f"GRANT SELECT ON ks.u TO {name}", "AUTHORIZE", "<table ks.u>")
    user.grant("AUTHORIZE ON KEYSPACE ks")
    user.denied(f"GRANT SELECT ON ks.u TO {name}", "SELECT", "<table ks.u>")
    user.grant("SELECT ON ks.u")
    user.session.execute(f"GRANT SELECT ON ks.u TO {name}")

    # GRANT's own errors (permission_altering_statement.cc, role_manager.hh)
    with pytest.raises(InvalidRequest, match=_message("<table ks.nope> doesn't exist.")):
        admin.execute(f"GRANT SELECT ON ks.nope TO {name}")
    with pytest.raises(InvalidRequest, match=_message("<keyspace nope> doesn't exist.")):
        admin.execute(f"GRANT SELECT ON KEYSPACE nope TO {name}")
    with pytest.raises(
        SyntaxException,
        match=_message("Resource <table ks.u> does not support any of the requested permissions."),
    ):
        admin.execute(f"GRANT CREATE ON ks.u TO {name}")
    with pytest.raises(InvalidRequest, match=_message("Role nobody doesn't exist.")):
        admin.execute("GRANT SELECT ON ks.u TO nobody")
    admin.execute(f"GRANT ALL PERMISSIONS ON ks.u TO {name}")
    rows = admin.execute(f"SELECT resource, permissions FROM system.role_permissions WHERE role = '{name}'")
    assert {r.resource: set(r.permissions) for r in rows} == {
        "data/ks/u": {"ALTER", "AUTHORIZE", "DROP", "MODIFY", "SELECT"}
    }
    admin.execute(f"DROP ROLE {name}")
    assert admin.execute(f"SELECT * FROM system.roles WHERE role = '{name}'").one() is None
    with pytest.raises(InvalidRequest, match=_message(f"Role {name} doesn't exist.")):
        admin.execute(f"DROP ROLE {name}")
    admin.execute(f"DROP ROLE IF EXISTS {name}")


def test_superuser_roles_need_no_grants(server: EmulatorServer, admin: Session) -> None:
    name = f"boss{next(_names)}"
    admin.execute(f"CREATE ROLE {name} WITH PASSWORD = 'x' AND LOGIN = true AND SUPERUSER = true")
    cluster, session = _connect(server, name, "x")
    try:
        assert len(list(session.execute("SELECT * FROM other.w"))) == 1
        session.execute("INSERT INTO other.w (pk, v) VALUES (9, 9)")
        assert list(session.execute("SELECT * FROM system_distributed.cdc_generation_timestamps"))
        with pytest.raises(
            Unauthorized,
            match=_message(
                "You aren't allowed to alter your own superuser status or that of a role granted to you."
            ),
        ):
            session.execute(f"ALTER ROLE {name} WITH SUPERUSER = false")
    finally:
        cluster.shutdown()


def test_without_credentials_nothing_is_checked_and_grants_are_refused(emulator: Any) -> None:
    cluster = Cluster([emulator.host], port=emulator.port, protocol_version=4)
    try:
        session = cluster.connect()
        session.execute("CREATE ROLE someone WITH LOGIN = true")
        with pytest.raises(
            InvalidRequest, match=_message("GRANT operation is not supported by AllowAllAuthorizer")
        ):
            session.execute("GRANT SELECT ON ALL KEYSPACES TO someone")
        assert list(session.execute("SELECT * FROM system_distributed.cdc_generation_timestamps"))
    finally:
        cluster.shutdown()
