"""Test certificates made with the ``openssl`` command: a CA, server and client certificates.

``TestPki(dir)`` writes, under ``dir``:

* ``ca.pem`` / ``ca.key``: the test CA the servers' certificates are signed by;
* ``server.pem`` / ``server.key``: for ``127.0.0.1`` and ``localhost`` (the names tests dial);
* ``wrong-host.pem`` / ``wrong-host.key``: signed by the same CA for ``other.example`` only;
* ``client.pem`` / ``client.key``: a client certificate (CN ``cdcd``) for mutual TLS;
* ``other-ca.pem``: a second CA that signed nothing the servers present (the "unknown CA" case).

Keys are P-256 (fast to make), certificates valid for two days. Every file is world-readable so
that servers running as another user (PostgreSQL runs as ``postgres``) can read them; PostgreSQL
wants its key private, so ``private_copy`` gives it one it owns with mode 0600.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from pathlib import Path

__all__ = ["TestPki", "server_context"]


def server_context(cert_file: str, key_file: str, client_ca: str | None = None) -> ssl.SSLContext:
    """A server TLS context presenting ``cert_file``/``key_file``; with ``client_ca``, clients must
    present a certificate signed by it (mutual TLS: Scylla's ``require_client_auth``,
    ClickHouse's ``verificationMode: strict``)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    if client_ca is not None:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {proc.stderr}")


class TestPki:
    """The CA, certificates and keys of one test session (see the module docstring)."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._ca("ca")
        self._ca("other-ca")
        self._leaf("server", "127.0.0.1", "subjectAltName=IP:127.0.0.1,DNS:localhost", server=True)
        self._leaf("wrong-host", "other.example", "subjectAltName=DNS:other.example", server=True)
        self._leaf("client", "cdcd", "subjectAltName=DNS:cdcd", server=False)
        for path in self.dir.iterdir():
            path.chmod(0o644)
        self.dir.chmod(0o755)

    def path(self, name: str) -> str:
        return str(self.dir / name)

    @property
    def ca(self) -> str:
        return self.path("ca.pem")

    @property
    def other_ca(self) -> str:
        return self.path("other-ca.pem")

    def cert(self, name: str) -> tuple[str, str]:
        """``(cert, key)`` of ``server``, ``wrong-host`` or ``client``."""
        return self.path(f"{name}.pem"), self.path(f"{name}.key")

    def private_copy(self, name: str, directory: Path, owner: str | None = None) -> tuple[str, str]:
        """Copies of ``name``'s certificate and key in ``directory``, the key mode 0600 (and both
        owned by ``owner`` when given), as PostgreSQL requires of its key."""
        cert, key = self.cert(name)
        out_cert, out_key = directory / f"{name}.pem", directory / f"{name}.key"
        shutil.copyfile(cert, out_cert)
        shutil.copyfile(key, out_key)
        out_key.chmod(0o600)
        if owner is not None and os.geteuid() == 0:
            for p in (out_cert, out_key):
                shutil.chown(p, owner, owner)
        return str(out_cert), str(out_key)

    def _ca(self, name: str) -> None:
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=cdcd test {name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=self.dir,
        )  # fmt: skip

    def _leaf(self, name: str, cn: str, san: str, *, server: bool) -> None:
        usage = "serverAuth" if server else "clientAuth"
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={cn}",
            "-CA", "ca.pem", "-CAkey", "ca.key", "-addext", san,
            "-addext", "basicConstraints=critical,CA:FALSE", "-addext", f"extendedKeyUsage={usage}",
            cwd=self.dir,
        )  # fmt: skip
