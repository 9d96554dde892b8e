"""Real servers speaking TLS only, with the certificates of ``tests.tls.TestPki``.

* ``pg_tls(pki)``: PostgreSQL with ``ssl = on``; TCP clients must use TLS and present a client
  certificate signed by the test CA (``hostssl ... clientcert=verify-ca``); plaintext TCP is refused.
  Yields ``(admin_dsn, port)``: ``admin_dsn`` goes through the unix socket (no TLS needed).
* ``redis_tls(pki)``: redis-server on its ``tls-port`` only (``port 0``), client certificates
  required (``tls-auth-clients yes``). Yields the port.
* ``clickhouse_tls(pki)``: the ClickHouse test endpoint (``tests.clickhouse_server``) serving HTTPS
  with client certificates required. Yields its ``https://127.0.0.1:port`` URL.
* The Scylla emulator takes ``tls=tls_context(cert, key, client_ca)`` itself.

Every server presents ``server.pem`` (for ``127.0.0.1`` and ``localhost``) unless ``cert`` names
another of the PKI's certificates (``wrong-host``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import ROOT, _PgCluster, _require, free_port, wait_until
from tests.tls import TestPki

__all__ = ["clickhouse_tls", "pg_tls", "redis_tls"]


@contextlib.contextmanager
def pg_tls(pki: TestPki, cert: str = "server", auth: str = "trust") -> Iterator[tuple[str, int]]:
    """``auth``: the pg_hba method over TLS (``scram-sha-256`` for password logins)."""
    keys = Path(tempfile.mkdtemp(prefix="cdcd-pg-tls-"))
    owner = "postgres" if os.geteuid() == 0 else None
    if owner:
        shutil.chown(keys, owner, owner)
    crt, key = pki.private_copy(cert, keys, owner)
    ca = shutil.copy(pki.ca, keys / "ca.pem")  # the PKI's folder may be closed to the postgres user
    hba = f"local all all trust\nhostssl all all 127.0.0.1/32 {auth} clientcert=verify-ca\n"
    options = f"-c ssl=on -c ssl_cert_file={crt} -c ssl_key_file={key} -c ssl_ca_file={ca}"
    cluster = _PgCluster(options, hba)
    try:
        yield f"postgresql://postgres@/postgres?host={cluster.dir}&port={cluster.port}", cluster.port
    finally:
        cluster.stop()
        shutil.rmtree(keys, ignore_errors=True)


@contextlib.contextmanager
def redis_tls(pki: TestPki, cert: str = "server", password: str | None = None) -> Iterator[int]:
    """``password``: ``requirepass`` (the ``default`` user's password)."""
    server = _require(shutil.which("redis-server"), "redis-server")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="cdcd-redis-tls-")
    crt, key = pki.cert(cert)
    proc = subprocess.Popen(
        [server, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir, "--logfile", os.path.join(workdir, "redis.log"),
         "--tls-cert-file", crt, "--tls-key-file", key, "--tls-ca-cert-file", pki.ca,
         "--tls-auth-clients", "yes", *(["--requirepass", password] if password else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    ctx = ssl.create_default_context(cafile=pki.ca)
    ctx.check_hostname = False  # the readiness probe only; cdcd's connections check it
    ctx.load_cert_chain(*pki.cert("client"))

    def ping() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw, ctx.wrap_socket(raw) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))

    try:
        wait_until(ping, 10, "redis-server (TLS)")
        yield port
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def clickhouse_tls(pki: TestPki, cert: str = "server") -> Iterator[str]:
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="cdcd-ch-tls-")
    log = open(os.path.join(workdir, "server.log"), "wb")  # noqa: SIM115
    crt, key = pki.cert(cert)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.clickhouse_server", "--host", "127.0.0.1", "--port", str(port),
         "--path", os.path.join(workdir, "data"), "--tls-cert", crt, "--tls-key", key,
         "--tls-client-ca", pki.ca],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    ctx = ssl.create_default_context(cafile=pki.ca)
    ctx.check_hostname = False  # the readiness probe only
    ctx.load_cert_chain(*pki.cert("client"))
    url = f"https://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: urllib.request.urlopen(f"{url}/ping", timeout=1, context=ctx).status == 200,
            60, "ClickHouse (HTTPS)",
        )  # fmt: skip
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
