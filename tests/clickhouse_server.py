"""A ClickHouse HTTP endpoint for tests: the real ClickHouse engine (chDB) behind a small HTTP front.

No modern ``clickhouse-server`` can be installed on our machines (shared/docs/infra.md §1), so the
tests run the real engine in-process through ``chdb`` and expose the subset of ClickHouse's HTTP
interface that ``clickhouse-connect`` (sync and async) uses:

* ``GET /ping``, ``GET|POST /?query=...`` with the query in the URL, the body, or both;
* ``database``, ``default_format``, ``param_<name>`` (server-side parameters) and any other URL
  parameter that names a ClickHouse setting (applied for that query only, e.g.
  ``insert_deduplication_token``);
* request bodies compressed with lz4 / zstd / gzip / deflate, chunked transfer encoding;
* ``INSERT ... FORMAT <fmt>`` followed by data (Native from clickhouse-connect), run as
  ``INSERT ... FROM INFILE`` on a temporary file;
* ``X-ClickHouse-Summary`` / ``-Query-Id`` / ``-Format`` / ``-Timezone`` headers, and errors as
  HTTP 500 with ``X-ClickHouse-Exception-Code`` like the real server.

Queries run one at a time (one chDB session behind a lock). Responses are never compressed.

Run standalone: ``python -m tests.clickhouse_server --host 127.0.0.1 --port 8123 --path DIR``;
``--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]`` serves HTTPS instead (mutual TLS with
the client CA), as ClickHouse's ``https_port`` does.
Embed: ``ClickHouseTestServer(path).start()`` then ``.url``; ``.stop()``.
"""

from __future__ import annotations

import argparse
import contextlib
import email.parser
import email.policy
import gzip
import json
import re
import signal
import socket
import ssl
import tempfile
import threading
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.tls import server_context

__all__ = ["ClickHouseTestServer", "main"]

# URL parameters that belong to the HTTP interface or the client, not to query settings.
_NOT_SETTINGS = frozenset(
    {
        "query", "database", "default_format", "query_id", "session_id", "session_timeout",
        "session_check", "compress", "decompress", "user", "password", "quota_key",
        "enable_http_compression", "wait_end_of_query", "buffer_size", "client_protocol_version",
        "send_progress_in_http_headers", "http_headers_progress_interval_ms", "http_zlib_compression_level",
        "output_format_arrow_string_as_string", "date_time_input_format",
    }
)  # fmt: skip
_FORMAT_AT_END = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*$", re.IGNORECASE | re.DOTALL)
_INSERT_HEAD = re.compile(rb"\s*(INSERT\b.*?\bFORMAT\s+[A-Za-z0-9_]+)[ \t]*\r?\n", re.IGNORECASE | re.DOTALL)
_ERROR_CODE = re.compile(r"Code:\s*(\d+)")
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _decompress(body: bytes, encoding: str) -> bytes:
    enc = encoding.strip().lower()
    if not enc or enc == "identity":
        return body
    if enc == "gzip":
        return gzip.decompress(body)
    if enc == "deflate":
        return zlib.decompress(body)
    if enc == "lz4":
        import lz4.frame

        # one frame per Native block (clickhouse-connect): lz4.frame.decompress reads only the first
        parts = []
        while body:
            frame = lz4.frame.LZ4FrameDecompressor()
            parts.append(frame.decompress(body))
            body = frame.unused_data
        return b"".join(parts)
    if enc == "zstd":
        from backports import zstd  # shipped with clickhouse-connect

        out = zstd.decompress(body)
        return out
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


def _form_fields(content_type: str, body: bytes) -> dict[str, str]:
    """The text fields of a multipart/form-data body (how clients send large query parameters)."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    out: dict[str, str] = {}
    for part in msg.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        if name:
            out[str(name)] = (part.get_payload(decode=True) or b"").decode()
    return out


def _sql_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class _Engine:
    """One chDB session; every query runs under ``lock``."""

    def __init__(self, path: str) -> None:
        import chdb

        self.conn: Any = chdb.connect(path)
        self.lock = threading.Lock()
        self.timezone = self._scalar("SELECT timezone()")
        self.version = self._scalar("SELECT version()")
        rows = self._text("SELECT name, value FROM system.settings").splitlines()
        self.setting_defaults = dict(line.split("\t", 1) for line in rows if "\t" in line)

    def _text(self, sql: str) -> str:
        data: bytes = self.conn.query(sql, "TabSeparated").bytes()
        return data.decode()

    def _scalar(self, sql: str) -> str:
        return self._text(sql).strip()

    def run(
        self,
        sql: str,
        body: bytes,
        *,
        fmt: str,
        params: dict[str, str],
        settings: dict[str, str],
        db: str | None,
    ) -> tuple[bytes, dict[str, str]]:
        with self.lock:
            applied: list[str] = []
            try:
                if db:
                    self.conn.query(f"USE `{db.replace('`', '')}`", "TabSeparated")
                for name, value in settings.items():
                    self.conn.query(f"SET {name} = {_sql_literal(value)}", "TabSeparated")
                    applied.append(name)
                return self._run_locked(sql, body, fmt, params)
            finally:
                for name in applied:
                    default = self.setting_defaults.get(name, "")
                    self.conn.query(f"SET {name} = {_sql_literal(default)}", "TabSeparated")

    def _run_locked(
        self, sql: str, body: bytes, fmt: str, params: dict[str, str]
    ) -> tuple[bytes, dict[str, str]]:
        summary = dict.fromkeys(
            ("read_rows", "read_bytes", "written_rows", "written_bytes", "total_rows_to_read", "result_rows",
             "result_bytes"), "0")  # fmt: skip
        if sql.lstrip()[:6].upper() == "INSERT" and body:
            m = _FORMAT_AT_END.search(sql)
            if not m:
                raise ValueError("INSERT with data needs a FORMAT clause")
            with tempfile.NamedTemporaryFile(suffix=".bin") as tmp:
                tmp.write(body)
                tmp.flush()
                res = self.conn.query(
                    f"{sql[: m.start()].rstrip()} FROM INFILE '{tmp.name}' FORMAT {m.group(1)}",
                    "TabSeparated",
                    params=params or None,
                )
            summary["written_rows"] = str(res.rows_written())
            summary["written_bytes"] = str(res.bytes_written())
            return b"", summary
        if body:
            sql = f"{sql}\n{body.decode()}" if sql else body.decode()
        res = self.conn.query(sql, fmt, params=params or None)
        out: bytes = res.bytes() or b""
        summary["read_rows"] = str(res.rows_read())
        summary["read_bytes"] = str(res.bytes_read())
        summary["result_bytes"] = str(len(out))
        return out, summary


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    engine: _Engine  # set on the subclass made per server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle + delayed ACK add ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "Keep-Alive")
        self.end_headers()
        self.wfile.write(body)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(parts)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self) -> None:
        url = urlsplit(self.path)
        if url.path in ("/ping", "/replicas_status"):
            self._send(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
            return
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        query_id = params.get("query_id") or str(uuid.uuid4())
        try:
            body = _decompress(self._read_body(), self.headers.get("Content-Encoding", ""))
            ctype = self.headers.get("Content-Type", "")
            if ctype.lower().startswith("multipart/form-data"):
                params.update(_form_fields(ctype, body))  # large query parameters (clickhouse-connect)
                body = b""
            sql = params.get("query", "")
            if not sql and body[:64].lstrip()[:6].upper() == b"INSERT":
                head = _INSERT_HEAD.match(body)
                if head:
                    sql, body = head.group(1).decode(), body[head.end() :]
            fmt = params.get("default_format", "TabSeparated")
            m = _FORMAT_AT_END.search(sql or body[-200:].decode(errors="replace"))
            if m:
                fmt = m.group(1)
            qparams = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
            settings = {
                k: v
                for k, v in params.items()
                if k not in _NOT_SETTINGS
                and not k.startswith("param_")
                and _SETTING_NAME.match(k)
                and k in self.engine.setting_defaults
            }
            out, summary = self.engine.run(
                sql, body, fmt=fmt, params=qparams, settings=settings, db=params.get("database")
            )
        except Exception as exc:
            msg = str(exc)
            code_m = _ERROR_CODE.search(msg)
            code = code_m.group(1) if code_m else "1001"
            if not msg.startswith("Code:"):
                msg = f"Code: {code}. DB::Exception: {msg}"
            self._send(
                500,
                f"{msg} (version {self.engine.version})\n".encode(),
                {
                    "Content-Type": "text/plain; charset=UTF-8",
                    "X-ClickHouse-Exception-Code": code,
                    "X-ClickHouse-Query-Id": query_id,
                },
            )
            return
        self._send(
            200,
            out,
            {
                "Content-Type": "application/octet-stream",
                "X-ClickHouse-Server-Display-Name": "cdcd-chdb-test",
                "X-ClickHouse-Query-Id": query_id,
                "X-ClickHouse-Format": fmt,
                "X-ClickHouse-Timezone": self.engine.timezone,
                "X-ClickHouse-Summary": json.dumps(summary),
            },
        )


class _HTTPServer(ThreadingHTTPServer):
    """Plain HTTP, or HTTPS when ``tls`` is set (the handshake runs in the request's thread, so a
    client that fails it delays no one; it is closed without an answer, as ClickHouse does)."""

    tls: ssl.SSLContext | None = None

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is not None:
            try:
                request.settimeout(10)
                request.do_handshake()
                request.settimeout(None)
            except (ssl.SSLError, OSError):
                return  # shutdown_request() closes it
        super().finish_request(request, client_address)


tls_context = server_context  # (tests.tls)


class ClickHouseTestServer:
    """The chDB-backed endpoint, served from a background thread (HTTPS with ``tls``)."""

    def __init__(
        self, path: str, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None
    ) -> None:
        handler = type("Handler", (_Handler,), {"engine": _Engine(path)})
        self._httpd = _HTTPServer((host, port), handler)
        self._httpd.tls = tls
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        scheme = "https" if self._httpd.tls is not None else "http"
        return f"{scheme}://{self._httpd.server_address[0]}:{self.port}"

    def start(self) -> ClickHouseTestServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="clickhouse-test", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.clickhouse_server", description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--path", default=tempfile.mkdtemp(prefix="cdcd-ch-"), help="chDB data directory")
    ap.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    ap.add_argument("--tls-key", help="private key (PEM) of --tls-cert")
    ap.add_argument("--tls-client-ca", help="with HTTPS, require client certificates signed by this CA")
    args = ap.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        ap.error("--tls-cert and --tls-key go together")
    tls = tls_context(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    server = ClickHouseTestServer(args.path, args.host, args.port, tls)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.stop, daemon=True).start())
    print(
        f"clickhouse test server (chDB {server._httpd.RequestHandlerClass.engine.version}) "  # type: ignore[attr-defined]
        f"listening on {server.url}",
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
