"""Recursive-descent parser for the CQL subset a CDC user writes.

``parse(text) -> (statement, n_binds)``. Anything outside the supported subset raises
``CqlError(SYNTAX_ERROR)`` (malformed) or ``CqlError(INVALID)`` (well-formed but not supported by the
emulator), naming the construct; nothing is silently ignored.
"""

from __future__ import annotations

from typing import Any

from tests.scylla_emulator.api import CqlError, ErrorCode
from tests.scylla_emulator.cql import ast as A
from tests.scylla_emulator.cql.lexer import Token, tokenize

__all__ = ["parse", "unsupported"]

_UNSUPPORTED_FIRST = {
    "list",
    "describe",
    "desc",
    "login",
    "add",
    "create_index",
    "create_materialized",
    "create_function",
    "create_aggregate",
    "create_role",
    "create_user",
    "create_trigger",
    "create_custom",
}
_COMPARISON = ("=", "<", "<=", ">", ">=", "!=")
_PERMISSIONS = {
    "create",
    "alter",
    "drop",
    "select",
    "modify",
    "authorize",
    "describe",
    "execute",
    "vector_search_indexing",
    "text_search_indexing",
}
_ROLE_OPTIONS = ("password", "login", "superuser")


def unsupported(what: str) -> CqlError:
    return CqlError(ErrorCode.INVALID, f"Unsupported by the Scylla emulator: {what}")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = tokenize(text)
        self.i = 0
        self.binds = 0

    # ------------------------------------------------------------------------------ primitives
    @property
    def tok(self) -> Token:
        return self.toks[self.i]

    def peek(self, k: int = 1) -> Token:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def error(self, msg: str | None = None) -> CqlError:
        t = self.tok
        text = t.value if t.kind != "eof" else "<EOF>"
        return CqlError(
            ErrorCode.SYNTAX_ERROR, msg or f"line 1:{t.pos} no viable alternative at input '{text}'"
        )

    def next(self) -> Token:
        t = self.toks[self.i]
        self.i += 1
        return t

    def at_kw(self, *words: str) -> bool:
        return self.tok.is_kw(*words)

    def at_sym(self, *syms: str) -> bool:
        return self.tok.kind == "sym" and self.tok.value in syms

    def accept_kw(self, *words: str) -> bool:
        if self.at_kw(*words):
            self.i += 1
            return True
        return False

    def accept_sym(self, sym: str) -> bool:
        if self.at_sym(sym):
            self.i += 1
            return True
        return False

    def expect_kw(self, *words: str) -> str:
        if not self.at_kw(*words):
            raise self.error(
                f"line 1:{self.tok.pos} mismatched input '{self.tok.value}' expecting {words[0].upper()}"
            )
        return self.next().value

    def expect_sym(self, sym: str) -> None:
        if not self.accept_sym(sym):
            raise self.error(
                f"line 1:{self.tok.pos} mismatched input '{self.tok.value or '<EOF>'}' expecting '{sym}'"
            )

    def ident(self) -> str:
        t = self.tok
        if t.kind in ("ident", "qident"):
            self.i += 1
            return t.value
        raise self.error()

    def qualified(self) -> tuple[str | None, str]:
        first = self.ident()
        if self.accept_sym("."):
            return first, self.ident()
        return None, first

    # ------------------------------------------------------------------------------ statements
    def statement(self) -> Any:
        t = self.tok
        if t.kind != "ident":
            raise self.error()
        kw = t.value
        if kw == "select":
            st = self.select()
        elif kw == "insert":
            st = self.insert()
        elif kw == "update":
            st = self.update()
        elif kw == "delete":
            st = self.delete()
        elif kw == "begin":
            st = self.batch()
        elif kw == "create":
            st = self.create()
        elif kw == "drop":
            st = self.drop()
        elif kw == "alter":
            st = self.alter()
        elif kw == "use":
            self.next()
            st = A.Use(self.ident())
        elif kw == "truncate":
            self.next()
            self.accept_kw("table")
            ks, name = self.qualified()
            st = A.Truncate(ks, name)
        elif kw in ("grant", "revoke"):
            st = self.grant_or_revoke()
        elif kw in _UNSUPPORTED_FIRST:
            raise unsupported(f"{kw.upper()} statements")
        else:
            raise self.error()
        return st

    def finish(self) -> None:
        self.accept_sym(";")
        if self.tok.kind != "eof":
            raise self.error(f"line 1:{self.tok.pos} extraneous input '{self.tok.value}'")

    # ---- DDL
    def create(self) -> Any:
        self.expect_kw("create")
        if self.accept_kw("keyspace", "schema"):
            ine = self.if_not_exists()
            name = self.ident()
            self.expect_kw("with")
            opts = self.options()
            repl = opts.pop("replication", None)
            if not isinstance(repl, dict):
                raise CqlError(ErrorCode.CONFIG_ERROR, "Missing mandatory replication strategy class")
            durable = opts.pop("durable_writes", True)
            tablets = opts.pop("tablets", None)
            if opts:
                raise CqlError(ErrorCode.SYNTAX_ERROR, f"Unknown property '{next(iter(opts))}'")
            return A.CreateKeyspace(
                name, ine, {str(k): str(v) for k, v in repl.items()}, _bool_opt(durable), tablets
            )
        if self.accept_kw("table", "columnfamily"):
            return self.create_table()
        if self.accept_kw("type"):
            ine = self.if_not_exists()
            ks, name = self.qualified()
            self.expect_sym("(")
            fields = []
            while True:
                fname = self.ident()
                fields.append((fname, self.cql_type()))
                if not self.accept_sym(","):
                    break
            self.expect_sym(")")
            return A.CreateType(ks, name, ine, fields)
        if self.accept_kw("role"):
            ine = self.if_not_exists()
            name = self.role_name()
            return A.CreateRole(name, ine, self.role_options())
        what = self.tok.value
        if what in (
            "index",
            "materialized",
            "function",
            "aggregate",
            "user",
            "trigger",
            "custom",
            "or",
        ):
            raise unsupported(f"CREATE {what.upper()}")
        raise self.error()

    def if_not_exists(self) -> bool:
        if self.accept_kw("if"):
            self.expect_kw("not")
            self.expect_kw("exists")
            return True
        return False

    def if_exists(self) -> bool:
        if self.accept_kw("if"):
            self.expect_kw("exists")
            return True
        return False

    def create_table(self) -> A.CreateTable:
        ine = self.if_not_exists()
        ks, name = self.qualified()
        self.expect_sym("(")
        cols: list[tuple[str, str, bool]] = []
        pk: list[str] = []
        ck: list[str] = []
        while True:
            if self.at_kw("primary") and self.peek().is_kw("key"):
                self.next()
                self.next()
                self.expect_sym("(")
                if self.accept_sym("("):
                    while True:
                        pk.append(self.ident())
                        if not self.accept_sym(","):
                            break
                    self.expect_sym(")")
                else:
                    pk.append(self.ident())
                while self.accept_sym(","):
                    ck.append(self.ident())
                self.expect_sym(")")
            else:
                cname = self.ident()
                ctype = self.cql_type()
                static = self.accept_kw("static")
                if self.accept_kw("primary"):
                    self.expect_kw("key")
                    if pk:
                        raise CqlError(
                            ErrorCode.INVALID, "Multiple PRIMARY KEYs specifed (exactly one required)"
                        )
                    pk.append(cname)
                cols.append((cname, ctype, static))
            if not self.accept_sym(","):
                break
            if self.at_sym(")"):
                break
        self.expect_sym(")")
        order: dict[str, str] = {}
        options: dict[str, Any] = {}
        compact = False
        if self.accept_kw("with"):
            while True:
                if self.accept_kw("clustering"):
                    self.expect_kw("order")
                    self.expect_kw("by")
                    self.expect_sym("(")
                    while True:
                        c = self.ident()
                        order[c] = self.expect_kw("asc", "desc") if self.at_kw("asc", "desc") else "asc"
                        if not self.accept_sym(","):
                            break
                    self.expect_sym(")")
                elif self.accept_kw("compact"):
                    self.expect_kw("storage")
                    compact = True
                else:
                    k = self.ident()
                    self.expect_sym("=")
                    options[k] = self.option_value()
                if not self.accept_kw("and"):
                    break
        if not pk:
            raise CqlError(ErrorCode.INVALID, "No PRIMARY KEY specifed (exactly one required)")
        return A.CreateTable(ks, name, ine, cols, pk, ck, order, options, compact)

    def options(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while True:
            k = self.ident()
            self.expect_sym("=")
            out[k] = self.option_value()
            if not self.accept_kw("and"):
                break
        return out

    def option_value(self) -> Any:
        t = self.tok
        if t.kind == "string":
            self.next()
            return t.value
        if t.kind in ("int", "float") or self.at_sym("-"):
            neg = self.accept_sym("-")
            t = self.next()
            if t.kind not in ("int", "float"):
                raise self.error()
            v: Any = int(t.value) if t.kind == "int" else float(t.value)
            return -v if neg else v
        if t.kind == "ident":
            self.next()
            if t.value in ("true", "false"):
                return t.value == "true"
            return t.value
        if self.accept_sym("{"):
            m: dict[str, Any] = {}
            if not self.accept_sym("}"):
                while True:
                    k = self.option_value()
                    self.expect_sym(":")
                    m[str(k) if not isinstance(k, bool) else str(k).lower()] = self.option_value()
                    if not self.accept_sym(","):
                        break
                self.expect_sym("}")
            return m
        raise self.error()

    def drop(self) -> Any:
        self.expect_kw("drop")
        if self.accept_kw("keyspace", "schema"):
            ie = self.if_exists()
            return A.DropKeyspace(self.ident(), ie)
        if self.accept_kw("table", "columnfamily"):
            ie = self.if_exists()
            ks, name = self.qualified()
            return A.DropTable(ks, name, ie)
        if self.accept_kw("type"):
            ie = self.if_exists()
            ks, name = self.qualified()
            return A.DropType(ks, name, ie)
        if self.accept_kw("role"):
            ie = self.if_exists()
            return A.DropRole(self.role_name(), ie)
        raise unsupported(f"DROP {self.tok.value.upper()}")

    def alter(self) -> Any:
        self.expect_kw("alter")
        if self.accept_kw("table", "columnfamily"):
            ks, name = self.qualified()
            if self.accept_kw("add"):
                cols = []
                paren = self.accept_sym("(")
                while True:
                    c = self.ident()
                    ty = self.cql_type()
                    cols.append((c, ty, self.accept_kw("static")))
                    if not (paren and self.accept_sym(",")):
                        break
                if paren:
                    self.expect_sym(")")
                return A.AlterTable(ks, name, "add", columns=cols)
            if self.accept_kw("drop"):
                drops = []
                paren = self.accept_sym("(")
                while True:
                    drops.append(self.ident())
                    if not (paren and self.accept_sym(",")):
                        break
                if paren:
                    self.expect_sym(")")
                if self.at_kw("using"):
                    raise unsupported("ALTER TABLE DROP ... USING TIMESTAMP")
                return A.AlterTable(ks, name, "drop", drop=drops)
            if self.accept_kw("with"):
                return A.AlterTable(ks, name, "with", options=self.options())
            if self.accept_kw("rename"):
                renames = []
                while True:
                    a = self.ident()
                    self.expect_kw("to")
                    renames.append((a, self.ident()))
                    if not self.accept_kw("and"):
                        break
                return A.AlterTable(ks, name, "rename", renames=renames)
            if self.accept_kw("alter"):
                c = self.ident()
                self.expect_kw("type")
                return A.AlterTable(ks, name, "alter", columns=[(c, self.cql_type(), False)])
            raise self.error()
        if self.accept_kw("type"):
            ks, name = self.qualified()
            if self.accept_kw("add"):
                f = self.ident()
                return A.AlterType(ks, name, add=[(f, self.cql_type())])
            if self.accept_kw("rename"):
                renames = []
                while True:
                    a = self.ident()
                    self.expect_kw("to")
                    renames.append((a, self.ident()))
                    if not self.accept_kw("and"):
                        break
                return A.AlterType(ks, name, renames=renames)
            raise unsupported("this ALTER TYPE form")
        if self.accept_kw("role"):
            name = self.role_name()
            opts = self.role_options()
            if not opts:
                raise self.error()
            return A.AlterRole(name, opts)
        if self.at_kw("keyspace"):
            raise unsupported("ALTER KEYSPACE")
        raise unsupported(f"ALTER {self.tok.value.upper()}")

    # ---- roles and permissions
    def role_name(self) -> str:
        t = self.tok
        if t.kind in ("ident", "qident", "string"):
            self.i += 1
            return t.value
        raise self.error()

    def role_options(self) -> dict[str, Any]:
        """``[WITH PASSWORD = 's' AND LOGIN = b AND SUPERUSER = b]``."""
        if not self.accept_kw("with"):
            return {}
        if self.at_kw("hashed"):
            raise unsupported("CREATE ROLE ... WITH HASHED PASSWORD")
        out: dict[str, Any] = {}
        while True:
            k = self.ident()
            self.expect_sym("=")
            v = self.option_value()
            if k == "options":
                raise unsupported("role OPTIONS")
            if k not in _ROLE_OPTIONS:
                raise self.error(f"line 1:{self.tok.pos} no viable alternative at input '{k}'")
            if k in out:
                raise self.error(f"Multiple definition for property {k.upper()}")
            if (k == "password") != isinstance(v, str) or (k != "password" and not isinstance(v, bool)):
                raise self.error(f"Invalid value for role option {k.upper()}: {v!r}")
            out[k] = v
            if not self.accept_kw("and"):
                break
        return out

    def grant_or_revoke(self) -> A.GrantPermissions | A.RevokePermissions:
        grant = self.next().value == "grant"
        perms: frozenset[str] | None
        if self.accept_kw("all"):
            self.accept_kw("permissions")
            perms = None
        elif self.at_kw(*_PERMISSIONS) and self.peek().is_kw("permission", "on"):
            perms = frozenset({self.next().value.upper()})
            self.accept_kw("permission")
        else:
            raise unsupported(f"{'GRANT' if grant else 'REVOKE'} of a role (role hierarchies)")
        self.expect_kw("on")
        resource = self.resource()
        self.expect_kw("to" if grant else "from")
        role = self.role_name()
        if grant:
            return A.GrantPermissions(perms, resource, role)
        return A.RevokePermissions(perms, resource, role)

    def resource(self) -> tuple[str | None, ...]:
        if self.accept_kw("all"):
            if self.accept_kw("keyspaces"):
                return ()
            raise unsupported(f"permissions on ALL {self.tok.value.upper()} (only data resources)")
        if self.accept_kw("keyspace"):
            return (self.ident(),)
        if self.at_kw("role", "function", "functions", "user", "users"):
            raise unsupported(f"permissions on {self.tok.value.upper()} resources (only data resources)")
        self.accept_kw("table", "columnfamily")
        return self.qualified()

    def cql_type(self) -> str:
        t = self.tok
        if t.kind == "qident":
            self.next()
            return '"' + t.value.replace('"', '""') + '"' if t.value != t.value.lower() else t.value
        name = self.ident()
        if self.accept_sym("."):  # keyspace-qualified UDT: keep the bare name
            name = self.ident()
        if name in ("frozen", "list", "set", "map", "tuple", "vector"):
            self.expect_sym("<")
            params = [
                self.cql_type() if not (name == "vector" and self.tok.kind == "int") else self.next().value
            ]
            while self.accept_sym(","):
                params.append(self.next().value if self.tok.kind == "int" else self.cql_type())
            self.expect_sym(">")
            return f"{name}<{', '.join(params)}>"
        return name

    # ---- DML
    def using(self, st: A.Using) -> None:
        while True:
            if self.accept_kw("ttl"):
                st.ttl = self.term()
            elif self.accept_kw("timestamp"):
                st.timestamp = self.term()
            elif self.accept_kw("timeout"):
                st.timeout = self.term()
            else:
                raise self.error()
            if not self.accept_kw("and"):
                break

    def insert(self) -> A.Insert:
        self.expect_kw("insert")
        self.expect_kw("into")
        ks, table = self.qualified()
        if self.at_kw("json"):
            raise unsupported("INSERT JSON")
        self.expect_sym("(")
        cols = [self.ident()]
        while self.accept_sym(","):
            cols.append(self.ident())
        self.expect_sym(")")
        self.expect_kw("values")
        self.expect_sym("(")
        vals = [self.term()]
        while self.accept_sym(","):
            vals.append(self.term())
        self.expect_sym(")")
        st = A.Insert(ks, table, cols, vals)
        if len(cols) != len(vals):
            raise CqlError(ErrorCode.INVALID, "Unmatched column names/values")
        while True:
            if self.accept_kw("if"):
                self.expect_kw("not")
                self.expect_kw("exists")
                st.if_not_exists = True
            elif self.accept_kw("using"):
                self.using(st.using)
            else:
                break
        return st

    def update(self) -> A.Update:
        self.expect_kw("update")
        ks, table = self.qualified()
        using = A.Using()
        if self.accept_kw("using"):
            self.using(using)
        self.expect_kw("set")
        assigns = [self.assignment()]
        while self.accept_sym(","):
            assigns.append(self.assignment())
        self.expect_kw("where")
        where = self.relations()
        st = A.Update(ks, table, using, assigns, where)
        self.lwt_tail(st)
        return st

    def assignment(self) -> Any:
        col = self.ident()
        if self.accept_sym("["):
            key = self.term()
            self.expect_sym("]")
            self.expect_sym("=")
            return A.SetElement(col, key, self.term())
        if self.accept_sym("."):
            f = self.ident()
            self.expect_sym("=")
            return A.SetField(col, f, self.term())
        if self.accept_sym("+="):
            return A.AddTo(col, self.term())
        if self.accept_sym("-="):
            return A.RemoveFrom(col, self.term())
        self.expect_sym("=")
        t = self.tok
        if (
            t.kind in ("ident", "qident")
            and t.value == col
            and self.peek().kind == "sym"
            and self.peek().value in ("+", "-")
        ):
            self.next()
            op = self.next().value
            val = self.term()
            return A.AddTo(col, val) if op == "+" else A.RemoveFrom(col, val)
        val = self.term()
        if self.at_sym("+"):
            self.next()
            other = self.ident()
            if other != col:
                raise CqlError(
                    ErrorCode.INVALID, "Only expressions of the form X = <value> + X are supported."
                )
            return A.Prepend(col, val)
        return A.SetValue(col, val)

    def lwt_tail(self, st: Any) -> None:
        if self.accept_kw("if"):
            if self.accept_kw("exists"):
                st.if_exists = True
                return
            while True:
                st.conditions.append(self.condition())
                if not self.accept_kw("and"):
                    break

    def condition(self) -> A.Condition:
        col = self.ident()
        cond = A.Condition(col)
        if self.accept_sym("["):
            cond.element = self.term()
            self.expect_sym("]")
        elif self.accept_sym("."):
            cond.field = self.ident()
        if self.accept_kw("in"):
            cond.op = "in"
            cond.value = self.in_values()
            return cond
        if self.tok.kind == "sym" and self.tok.value in (*_COMPARISON, "<>"):
            op = self.next().value
            cond.op = "!=" if op == "<>" else op
            cond.value = self.term()
            return cond
        raise self.error()

    def delete(self) -> A.Delete:
        self.expect_kw("delete")
        targets: list[A.DeleteTarget] = []
        if not self.at_kw("from"):
            while True:
                c = self.ident()
                tgt = A.DeleteTarget(c)
                if self.accept_sym("["):
                    tgt.key = self.term()
                    self.expect_sym("]")
                elif self.accept_sym("."):
                    tgt.field = self.ident()
                targets.append(tgt)
                if not self.accept_sym(","):
                    break
        self.expect_kw("from")
        ks, table = self.qualified()
        using = A.Using()
        if self.accept_kw("using"):
            self.using(using)
        self.expect_kw("where")
        where = self.relations()
        st = A.Delete(ks, table, targets, using, where)
        self.lwt_tail(st)
        return st

    def batch(self) -> A.Batch:
        self.expect_kw("begin")
        kind = "logged"
        if self.at_kw("unlogged", "logged", "counter"):
            kind = self.next().value
        self.expect_kw("batch")
        using = A.Using()
        if self.accept_kw("using"):
            self.using(using)
        stmts: list[Any] = []
        while not self.at_kw("apply"):
            if self.accept_sym(";"):
                continue
            if self.at_kw("insert"):
                stmts.append(self.insert())
            elif self.at_kw("update"):
                stmts.append(self.update())
            elif self.at_kw("delete"):
                stmts.append(self.delete())
            else:
                raise CqlError(
                    ErrorCode.SYNTAX_ERROR,
                    f"line 1:{self.tok.pos} Only INSERT, UPDATE and DELETE are allowed in a batch, "
                    f"got '{self.tok.value}'",
                )
        self.expect_kw("apply")
        self.expect_kw("batch")
        return A.Batch(kind, using, stmts)

    # ---- SELECT
    def select(self) -> A.Select:
        self.expect_kw("select")
        json = self.accept_kw("json")
        distinct = self.accept_kw("distinct")
        selectors: list[A.Selector] | None
        if self.accept_sym("*"):
            selectors = None
        else:
            selectors = [self.selector()]
            while self.accept_sym(","):
                selectors.append(self.selector())
        self.expect_kw("from")
        ks, table = self.qualified()
        st = A.Select(ks, table, selectors, [], distinct=distinct, json=json)
        if self.accept_kw("where"):
            st.where = self.relations()
        while True:
            if self.accept_kw("group"):
                self.expect_kw("by")
                st.group_by.append(self.ident())
                while self.accept_sym(","):
                    st.group_by.append(self.ident())
            elif self.accept_kw("order"):
                self.expect_kw("by")
                while True:
                    c = self.ident()
                    d = self.next().value if self.at_kw("asc", "desc") else "asc"
                    st.order_by.append((c, d))
                    if not self.accept_sym(","):
                        break
            elif self.accept_kw("per"):
                self.expect_kw("partition")
                self.expect_kw("limit")
                st.per_partition_limit = self.term()
            elif self.accept_kw("limit"):
                st.limit = self.term()
            elif self.accept_kw("allow"):
                self.expect_kw("filtering")
                st.allow_filtering = True
            elif self.accept_kw("bypass"):
                self.expect_kw("cache")
                st.bypass_cache = True
            elif self.accept_kw("using"):
                self.using(st.using)
                if st.using.ttl is not None or st.using.timestamp is not None:
                    raise CqlError(ErrorCode.INVALID, "SELECT supports only USING TIMEOUT")
            else:
                break
        return st

    def selector(self) -> A.Selector:
        sel = self.selector_expr()
        if self.accept_kw("as"):
            sel.alias = self.ident()
        return sel

    def selector_expr(self) -> A.Selector:
        t = self.tok
        if t.kind in ("ident", "qident") and self.peek().kind == "sym" and self.peek().value == "(":
            name = t.value if t.kind == "ident" else t.value.lower()
            self.next()
            self.next()
            if name == "count" and self.at_sym("*"):
                self.next()
                self.expect_sym(")")
                return A.Selector("count_star", "count")
            if name == "cast":
                raise unsupported("CAST in selectors")
            args: list[Any] = []
            if not self.at_sym(")"):
                while True:
                    if self.tok.kind in ("ident", "qident") and not self.tok.is_kw("true", "false", "null"):
                        args.append(self.selector_expr())
                    else:
                        args.append(self.term())
                    if not self.accept_sym(","):
                        break
            self.expect_sym(")")
            if name in ("writetime", "ttl"):
                if len(args) != 1 or not isinstance(args[0], A.Selector) or args[0].kind != "col":
                    raise CqlError(ErrorCode.INVALID, f"{name} expects a single column argument")
                return A.Selector(name, args[0].name)
            if name == "token":
                return A.Selector("token", "token", args)
            return A.Selector("func", name, args)
        if t.kind in ("ident", "qident"):
            self.next()
            if self.at_sym("[") or self.at_sym("."):
                raise unsupported("collection element / field selectors")
            return A.Selector("col", t.value)
        if t.kind == "int" and t.value == "1":
            raise unsupported("literal selectors")
        raise self.error()

    # ---- WHERE
    def relations(self) -> list[A.Relation]:
        rels = [self.relation()]
        while self.accept_kw("and"):
            rels.append(self.relation())
        return rels

    def relation(self) -> A.Relation:
        if self.at_kw("token") and self.peek().kind == "sym" and self.peek().value == "(":
            self.next()
            self.next()
            cols = [self.ident()]
            while self.accept_sym(","):
                cols.append(self.ident())
            self.expect_sym(")")
            op = self.comparison()
            return A.Relation(("token", cols), op, self.term())
        if self.accept_sym("("):
            cols = [self.ident()]
            while self.accept_sym(","):
                cols.append(self.ident())
            self.expect_sym(")")
            if self.accept_kw("in"):
                if self.tok.kind in ("bind", "named_bind"):
                    return A.Relation(("multi", cols), "in", self.term())
                self.expect_sym("(")
                tuples: list[Any] = []
                if not self.at_sym(")"):
                    while True:
                        tuples.append(self.term())
                        if not self.accept_sym(","):
                            break
                self.expect_sym(")")
                return A.Relation(("multi", cols), "in", tuples)
            op = self.comparison()
            return A.Relation(("multi", cols), op, self.term())
        col = self.ident()
        if self.at_sym("[") or self.at_sym("."):
            raise unsupported("restrictions on collection elements or UDT fields")
        if self.accept_kw("in"):
            return A.Relation(("col", col), "in", self.in_values())
        if self.accept_kw("contains"):
            if self.accept_kw("key"):
                return A.Relation(("col", col), "contains_key", self.term())
            return A.Relation(("col", col), "contains", self.term())
        if self.at_kw("like"):
            raise unsupported("LIKE restrictions")
        if self.at_kw("is"):
            raise unsupported("IS NOT NULL restrictions")
        op = self.comparison()
        return A.Relation(("col", col), op, self.term())

    def in_values(self) -> Any:
        if self.tok.kind in ("bind", "named_bind"):
            return self.term()
        self.expect_sym("(")
        vals: list[Any] = []
        if not self.at_sym(")"):
            while True:
                vals.append(self.term())
                if not self.accept_sym(","):
                    break
        self.expect_sym(")")
        return vals

    def comparison(self) -> str:
        if self.tok.kind == "sym" and self.tok.value in (*_COMPARISON, "<>"):
            op = self.next().value
            return "!=" if op == "<>" else op
        raise self.error()

    # ---- terms
    def term(self) -> Any:
        t = self.tok
        k = t.kind
        if k == "bind":
            self.next()
            b = A.Bind(self.binds)
            self.binds += 1
            return b
        if k == "named_bind":
            self.next()
            b = A.Bind(self.binds, t.value)
            self.binds += 1
            return b
        if k in ("int", "float", "string", "uuid", "hex", "duration"):
            self.next()
            return A.Literal(k, t.value)
        if k == "sym":
            if t.value == "-":
                self.next()
                n = self.next()
                if n.kind in ("int", "float", "duration"):
                    return A.Literal(n.kind, "-" + n.value)
                if n.is_kw("nan", "infinity"):
                    return A.Literal(n.value, "-" + n.value)
                raise self.error()
            if t.value == "[":
                self.next()
                items: list[Any] = []
                if not self.at_sym("]"):
                    while True:
                        items.append(self.term())
                        if not self.accept_sym(","):
                            break
                self.expect_sym("]")
                return A.ListLit(items)
            if t.value == "{":
                return self.brace_literal()
            if t.value == "(":
                self.next()
                items = [self.term()]
                while self.accept_sym(","):
                    items.append(self.term())
                self.expect_sym(")")
                return A.TupleLit(items)
        if k == "ident":
            if t.value in ("true", "false"):
                self.next()
                return A.Literal("bool", t.value)
            if t.value == "null":
                self.next()
                return A.Literal("null", "null")
            if t.value in ("nan", "infinity"):
                self.next()
                return A.Literal(t.value, t.value)
            if self.peek().kind == "sym" and self.peek().value in ("(", "."):
                name = self.next().value
                if self.accept_sym("."):  # system.now()
                    name = self.ident()
                self.expect_sym("(")
                args: list[Any] = []
                if not self.at_sym(")"):
                    while True:
                        args.append(self.term())
                        if not self.accept_sym(","):
                            break
                self.expect_sym(")")
                return A.FuncCall(name, args)
        raise self.error()

    def brace_literal(self) -> Any:
        self.expect_sym("{")
        if self.accept_sym("}"):
            return A.MapLit([])
        # UDT literal: {ident: term, ...}
        t = self.tok
        if (
            t.kind in ("ident", "qident")
            and not t.is_kw("true", "false", "null", "nan", "infinity")
            and self.peek().kind == "sym"
            and self.peek().value == ":"
        ):
            fields = []
            while True:
                f = self.ident()
                self.expect_sym(":")
                fields.append((f, self.term()))
                if not self.accept_sym(","):
                    break
            self.expect_sym("}")
            return A.UdtLit(fields)
        first = self.term()
        if self.accept_sym(":"):
            pairs = [(first, self.term())]
            while self.accept_sym(","):
                k = self.term()
                self.expect_sym(":")
                pairs.append((k, self.term()))
            self.expect_sym("}")
            return A.MapLit(pairs)
        items = [first]
        while self.accept_sym(","):
            items.append(self.term())
        self.expect_sym("}")
        return A.SetLit(items)


def _bool_opt(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    return str(v).lower() == "true"


def parse(text: str) -> tuple[Any, int]:
    """Parse one CQL statement. Returns (AST, number of bind markers)."""
    p = _Parser(text)
    if p.tok.kind == "eof":
        raise CqlError(ErrorCode.SYNTAX_ERROR, "line 0:-1 no viable alternative at input '<EOF>'")
    st = p.statement()
    p.finish()
    return st, p.binds
