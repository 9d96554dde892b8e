"""``python -m tests.scylla_emulator --host 127.0.0.1 --port 9042 [--vnodes N --shards N] [--tablets]``.

Runs one emulator until SIGTERM/SIGINT and prints exactly one ``listening on host:port`` line
(flushed) once the socket accepts connections.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from tests.scylla_emulator.server import EmulatorServer, tls_context


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.scylla_emulator", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9042, help="0 picks a free port")
    ap.add_argument("--vnodes", type=int, default=16, help="vnode tokens of the node (default 16)")
    ap.add_argument("--shards", type=int, default=2, help="shards advertised to the driver (default 2)")
    ap.add_argument(
        "--tablets", action="store_true",
        help="new keyspaces use tablets unless created with tablets = {'enabled': false} "
        "(Scylla's tablets_mode_for_new_keyspaces: enabled); default: vnodes",
    )  # fmt: skip
    ap.add_argument(
        "--tablet-count", type=int, default=4,
        help="tablets of a new table without initial/min_tablet_count (rounded up to a power of two; default 4)",
    )  # fmt: skip
    ap.add_argument("--user", help="require PasswordAuthenticator login; this user is a superuser")
    ap.add_argument("--password", help="password for --user")
    ap.add_argument(
        "--log-read-delay", type=float, default=0.0,
        help="seconds each CDC log page waits before it is answered (default 0)",
    )  # fmt: skip
    ap.add_argument(
        "--cdc-log-permissions", choices=("base", "log"), default="base",
        help="SELECT on a CDC log is checked on its base table (base, Scylla >= 2025.3.2) "
        "or on the log table itself (log, older releases)",
    )  # fmt: skip
    ap.add_argument("--tls-cert", help="serve CQL over TLS only, with this certificate (PEM)")
    ap.add_argument("--tls-key", help="private key (PEM) of --tls-cert")
    ap.add_argument("--tls-client-ca", help="with TLS, require client certificates signed by this CA (PEM)")
    ap.add_argument("--log-level", default="WARNING")
    args = ap.parse_args(argv)
    if (args.user is None) != (args.password is None):
        ap.error("--user and --password go together")
    if (args.tls_cert is None) != (args.tls_key is None):
        ap.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca is not None and args.tls_cert is None:
        ap.error("--tls-client-ca needs --tls-cert and --tls-key")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    creds = (args.user, args.password) if args.user is not None else None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = EmulatorServer(
        args.host,
        args.port,
        vnodes=args.vnodes,
        shards=args.shards,
        credentials=creds,
        log_read_delay=args.log_read_delay,
        tls=tls_context(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None,
        tablets=args.tablets,
        tablet_count=args.tablet_count,
    )
    server.start()
    server.engine.auth.cdc_log_permissions = args.cdc_log_permissions  # a plain attribute
    print(f"listening on {server.host}:{server.port}", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
