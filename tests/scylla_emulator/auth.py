"""Roles and permissions: Scylla's PasswordAuthenticator, CassandraAuthorizer and standard role
manager, as far as a CDC consumer meets them.

Followed from ScyllaDB's source (scylladb/scylladb master, f4a4091ca28e):

* ``service/client_state.cc``: ``has_access`` / ``check_access_rules`` (SELECT on ``system.local``,
  ``system.peers``, ``system.one_row`` and every ``system_schema`` table needs no grant;
  ``system`` / ``system_schema`` take only SELECT/DESCRIBE from non-superusers and no CREATE/ALTER/
  DROP from anyone), ``check_has_permission`` (a grant on a parent covers its children:
  table -> keyspace -> all keyspaces) and the error text
  ``User <u> has no <PERM> permission on <resource> or any of its parents``;
* ``cql3/statements/select_statement.cc::check_access``: SELECT from ``<t>_scylla_cdc_log`` is
  checked on the base table ``<t>`` (since 2025.3.2 / 2025.4.0, scylladb#19798 / PR #25797; before,
  on the log table itself: ``cdc_log_permissions = "log"``);
* ``cql3/statements/modification_statement.cc::check_access``: writes need MODIFY, conditional
  (LWT) writes also SELECT;
* ``cql3/statements/permission_altering_statement.cc`` (GRANT/REVOKE: the resource must exist, only
  applicable permissions, the grantor needs AUTHORIZE and each granted permission),
  ``role-management-statements.cc`` (CREATE/ALTER/DROP ROLE), ``auth/resource.cc`` (resource names
  ``<all keyspaces>``, ``<keyspace ks>``, ``<table ks.t>``; applicable permissions);
* ``docs/operating-scylla/security/authorization.rst`` (auto-grant to the creator of a keyspace or
  table; CDC logs and views take their base table's permissions).

Resources are tuples: ``()`` all keyspaces, ``(ks,)``, ``(ks, table)``. ``user=None`` in every
check means an internal call (the emulator itself, tests calling the engine directly): no checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.scylla_emulator.api import CqlError, ErrorCode, VoidResult
from tests.scylla_emulator.cql import ast as A

__all__ = ["READABLE_SYSTEM_TABLES", "Auth", "Role", "resource_name"]

LOG_SUFFIX = "_scylla_cdc_log"
Resource = tuple[str, ...]

# Readable by every logged-in role without a grant (client_state.cc readable_system_resources:
# system.local, system.peers, system.one_row and db::schema_tables::all_tables()).
_SCHEMA_TABLES = [
    "keyspaces",
    "tables",
    "scylla_tables",
    "columns",
    "dropped_columns",
    "triggers",
    "views",
    "types",
    "functions",
    "aggregates",
    "indexes",
    "view_virtual_columns",
    "computed_columns",
    "scylla_keyspaces",
    "scylla_aggregates",
]
READABLE_SYSTEM_TABLES: frozenset[Resource] = frozenset(
    [("system", "local"), ("system", "peers"), ("system", "one_row")]
    + [("system_schema", t) for t in _SCHEMA_TABLES]
)
# replica/distributed_loader.cc is_system_keyspace()
_SYSTEM_KEYSPACES = frozenset({"system", "system_schema"})
_ALTERATION = frozenset({"CREATE", "ALTER", "DROP"})
_TABLE_PERMISSIONS = frozenset({"ALTER", "DROP", "SELECT", "MODIFY", "AUTHORIZE"})
_KEYSPACE_PERMISSIONS = _TABLE_PERMISSIONS | {"CREATE"}
_ALL_KEYSPACES_PERMISSIONS = _KEYSPACE_PERMISSIONS | {"VECTOR_SEARCH_INDEXING", "TEXT_SEARCH_INDEXING"}


def resource_name(r: Resource) -> str:
    """Scylla's rendering of a data resource (auth/resource.cc)."""
    if not r:
        return "<all keyspaces>"
    if len(r) == 1:
        return f"<keyspace {r[0]}>"
    return f"<table {r[0]}.{r[1]}>"


def _stored_name(r: Resource) -> str:
    """The resource as stored in ``system.role_permissions.resource``: data, data/ks, data/ks/t."""
    return "/".join(("data", *r))


def applicable(r: Resource) -> frozenset[str]:
    if not r:
        return _ALL_KEYSPACES_PERMISSIONS
    return _KEYSPACE_PERMISSIONS if len(r) == 1 else _TABLE_PERMISSIONS


def unauthorized(msg: str) -> CqlError:
    return CqlError(ErrorCode.UNAUTHORIZED, msg)


def _inv(msg: str) -> CqlError:
    return CqlError(ErrorCode.INVALID, msg)


@dataclass
class Role:
    name: str
    password: str | None = None
    login: bool = False
    superuser: bool = False
    permissions: dict[Resource, set[str]] = field(default_factory=dict)


class Auth:
    """Roles, grants and the checks. Off (``enabled`` False) until ``enable()``: then every
    request of a connection runs as its login role.

    ``exists(resource)`` says whether a keyspace/table exists (GRANT refuses missing ones);
    ``on_change()`` runs after every change of roles or grants (the engine refreshes
    ``system.roles`` / ``system.role_permissions`` from it).
    """

    def __init__(
        self, exists: Callable[[Resource], bool], on_change: Callable[[], None] | None = None
    ) -> None:
        self.exists = exists
        self.on_change = on_change or (lambda: None)
        self.enabled = False
        # "base": a CDC log's SELECT is checked on its base table (Scylla >= 2025.3.2 / 2025.4.0);
        # "log": on the log table itself (older releases).
        self.cdc_log_permissions = "base"
        self.roles: dict[str, Role] = {}

    # ---------------------------------------------------------------------------- authentication
    def enable(self, superuser: tuple[str, str]) -> None:
        """Turn on authentication and authorization with ``superuser`` = (name, password) as a
        login superuser (Scylla's default ``cassandra`` role plays that part)."""
        name, password = superuser
        role = self.roles.get(name)
        if role is None:
            role = self.roles[name] = Role(name)
        role.password, role.login, role.superuser = password, True, True
        self.enabled = True
        self.on_change()

    def login(self, user: str, password: str) -> str:
        """The role a SASL PLAIN user/password logs in as; BAD_CREDENTIALS otherwise."""
        role = self.roles.get(user)
        if role is None or role.password is None or role.password != password:
            raise CqlError(ErrorCode.BAD_CREDENTIALS, "Username and/or password are incorrect")
        if not role.login:
            raise CqlError(ErrorCode.BAD_CREDENTIALS, f"{user} is not permitted to log in")
        return user

    # ----------------------------------------------------------------------------- authorization
    def is_superuser(self, user: str | None) -> bool:
        if user is None:
            return True
        role = self.roles.get(user)
        return role is not None and role.superuser

    def has_permission(self, user: str, permission: str, resource: Resource) -> bool:
        """``client_state::check_has_permission``: the resource or any of its parents."""
        role = self.roles.get(user)
        if role is None:
            return False
        if role.superuser:
            return True
        r = resource
        while True:
            if permission in role.permissions.get(r, ()):
                return True
            if not r:
                return False
            r = r[:-1]

    def ensure_permission(self, user: str, permission: str, resource: Resource) -> None:
        if not self.has_permission(user, permission, resource):
            raise unauthorized(
                f"User {user} has no {permission} permission on {resource_name(resource)} or any of its parents"
            )

    def check_access(self, user: str, permission: str, resource: Resource) -> None:
        """``client_state::has_access`` for a data resource of a statement."""
        ks = resource[0] if resource else ""
        if permission == "SELECT" and resource in READABLE_SYSTEM_TABLES:
            return
        if permission in _ALTERATION and ks in _SYSTEM_KEYSPACES:
            raise unauthorized(f"{ks} keyspace is not user-modifiable.")
        if (
            permission not in ("SELECT", "DESCRIBE")
            and ks in _SYSTEM_KEYSPACES
            and not self.is_superuser(user)
        ):
            raise unauthorized(f"{ks} can be granted only SELECT or DESCRIBE permissions to a non-superuser.")
        self.ensure_permission(user, permission, resource)

    def authorize(self, user: str | None, stmt: Any, keyspace: str | None) -> None:
        """Raise UNAUTHORIZED unless ``user`` may run ``stmt`` (session keyspace ``keyspace``)."""
        if user is None or not self.enabled:
            return
        for permission, resource in self.required(stmt, keyspace):
            self.check_access(user, permission, resource)

    def required(self, stmt: Any, keyspace: str | None) -> list[tuple[str, Resource]]:
        """(permission, resource) pairs ``stmt`` needs, in Scylla's checking order. Statements on a
        table that does not exist need nothing here: they fail later with the usual error."""
        if isinstance(stmt, A.Select):
            ks = stmt.keyspace or keyspace
            if ks is None or not self.exists((ks, stmt.table)):
                return []
            table = stmt.table
            if (
                self.cdc_log_permissions == "base"
                and table.endswith(LOG_SUFFIX)
                and self.exists((ks, table[: -len(LOG_SUFFIX)]))
            ):
                table = table[: -len(LOG_SUFFIX)]  # cdc::get_base_table
            return [("SELECT", (ks, table))]
        if isinstance(stmt, A.Insert | A.Update | A.Delete):
            ks = stmt.keyspace or keyspace
            if ks is None or (ks, stmt.table) == ("emulator", "control") or not self.exists((ks, stmt.table)):
                return []
            out = [("MODIFY", (ks, stmt.table))]
            if (
                getattr(stmt, "if_not_exists", False)
                or getattr(stmt, "if_exists", False)
                or getattr(stmt, "conditions", None)
            ):
                out.append(("SELECT", (ks, stmt.table)))
            return out
        if isinstance(stmt, A.Batch):
            return [p for s in stmt.statements for p in self.required(s, keyspace)]
        if isinstance(stmt, A.Truncate):
            ks = stmt.keyspace or keyspace
            return [] if ks is None else [("MODIFY", (ks, stmt.name))]
        if isinstance(stmt, A.CreateKeyspace):
            return [("CREATE", ())]
        if isinstance(stmt, A.DropKeyspace):
            return [("DROP", (stmt.name,))]
        ks = getattr(stmt, "keyspace", None) or keyspace
        if ks is None:
            return []
        if isinstance(stmt, A.CreateTable | A.CreateType):
            return [("CREATE", (ks,))]
        if isinstance(stmt, A.AlterTable):
            return [("ALTER", (ks, stmt.name))]
        if isinstance(stmt, A.DropTable):
            return [("DROP", (ks, stmt.name))]
        if isinstance(stmt, A.AlterType):
            return [("ALTER", (ks,))]
        if isinstance(stmt, A.DropType):
            return [("DROP", (ks,))]
        return []

    # ------------------------------------------------------------------- schema change follow-up
    def created(self, user: str | None, resource: Resource) -> None:
        """Auto-grant: the creator of a keyspace or table gets every applicable permission on it."""
        if user is None or not self.enabled or user not in self.roles:
            return
        self.roles[user].permissions.setdefault(resource, set()).update(applicable(resource))
        self.on_change()

    def dropped(self, resource: Resource) -> None:
        """Auto-revoke: grants on a dropped keyspace/table (and what it contained) go away, so a
        later object of the same name starts without them."""
        n = len(resource)
        changed = False
        for role in self.roles.values():
            for r in [r for r in role.permissions if r[:n] == resource and len(r) >= n > 0]:
                del role.permissions[r]
                changed = True
        if changed:
            self.on_change()

    # ------------------------------------------------------------------------- role statements
    def execute(self, user: str | None, stmt: Any, keyspace: str | None) -> VoidResult:
        """Run CREATE/ALTER/DROP ROLE, GRANT, REVOKE as ``user`` (None: internal, unchecked)."""
        if isinstance(stmt, A.CreateRole):
            self._create_role(user, stmt)
        elif isinstance(stmt, A.AlterRole):
            self._alter_role(user, stmt)
        elif isinstance(stmt, A.DropRole):
            self._drop_role(user, stmt)
        else:
            self._grant_or_revoke(user, stmt, keyspace)
        self.on_change()
        return VoidResult()

    def _create_role(self, user: str | None, st: A.CreateRole) -> None:
        if user is not None and not self.is_superuser(user):  # role resources are not modelled
            raise unauthorized(f"User {user} has no CREATE permission on <all roles> or any of its parents")
        if st.name in self.roles:
            if st.if_not_exists:
                return
            raise _inv(f"Role {st.name} already exists.")
        o = st.options
        self.roles[st.name] = Role(st.name, o.get("password"), bool(o.get("login")), bool(o.get("superuser")))

    def _alter_role(self, user: str | None, st: A.AlterRole) -> None:
        o = st.options
        if user is not None:
            if "superuser" in o:
                if not self.is_superuser(user):
                    raise unauthorized("Only superusers are allowed to alter superuser status.")
                if user == st.name:
                    raise unauthorized(
                        "You aren't allowed to alter your own superuser status or that of a role granted to you."
                    )
            if user != st.name and not self.is_superuser(user):
                raise unauthorized(
                    f"User {user} has no ALTER permission on <role {st.name}> or any of its parents"
                )
        role = self.roles.get(st.name)
        if role is None:
            raise _inv(f"Role {st.name} doesn't exist.")
        if "password" in o:
            role.password = o["password"]
        if "login" in o:
            role.login = o["login"]
        if "superuser" in o:
            role.superuser = o["superuser"]

    def _drop_role(self, user: str | None, st: A.DropRole) -> None:
        if user is not None:
            if user == st.name:
                raise _inv("Cannot DROP primary role for current login.")
            if not self.is_superuser(user):
                raise unauthorized(
                    f"User {user} has no DROP permission on <role {st.name}> or any of its parents"
                )
        if self.roles.pop(st.name, None) is None and not st.if_exists:
            raise _inv(f"Role {st.name} doesn't exist.")

    def _grant_or_revoke(self, user: str | None, st: Any, keyspace: str | None) -> None:
        grant = isinstance(st, A.GrantPermissions)
        if not self.enabled:
            op = "GRANT" if grant else "REVOKE"
            raise _inv(f"{op} operation is not supported by AllowAllAuthorizer")
        resource: Resource
        if len(st.resource) == 2 and st.resource[0] is None:
            if keyspace is None:
                raise _inv(
                    "No keyspace has been specified. USE a keyspace, or explicitly specify keyspace.tablename"
                )
            resource = (keyspace, st.resource[1])
        else:
            resource = tuple(st.resource)
        allowed = applicable(resource)
        perms = allowed if st.permissions is None else st.permissions & allowed
        if not perms:
            raise CqlError(
                ErrorCode.SYNTAX_ERROR,
                f"Resource {resource_name(resource)} does not support any of the requested permissions.",
            )
        if resource and not self.exists(resource):
            raise _inv(f"{resource_name(resource)} doesn't exist.")
        if user is not None:
            self.ensure_permission(user, "AUTHORIZE", resource)
            for p in sorted(perms):
                self.ensure_permission(user, p, resource)
        role = self.roles.get(st.role)
        if role is None:
            raise _inv(f"Role {st.role} doesn't exist.")
        if grant:
            role.permissions.setdefault(resource, set()).update(perms)
        else:
            left = role.permissions.get(resource, set()) - perms
            if left:
                role.permissions[resource] = left
            else:
                role.permissions.pop(resource, None)

    # ------------------------------------------------------------------------------ system tables
    def role_rows(self) -> list[dict[str, Any]]:
        """Rows of ``system.roles`` (salted_hash is not crypt(3): the emulator keeps no hashes)."""
        return [
            {
                "role": r.name,
                "can_login": r.login,
                "is_superuser": r.superuser,
                "member_of": None,
                "salted_hash": None if r.password is None else "(emulator: not stored)",
            }
            for r in self.roles.values()
        ]

    def permission_rows(self) -> list[dict[str, Any]]:
        """Rows of ``system.role_permissions``."""
        return [
            {"role": r.name, "resource": _stored_name(res), "permissions": sorted(perms)}
            for r in self.roles.values()
            for res, perms in r.permissions.items()
            if perms
        ]
