"""Sample workload of the compose stack: writes orders into shop.orders for ever, with scenarios.

* steady inserts, updates of the status and deletes of orders (a few per second);
* PII: every order has an ``email`` (cdcd.toml hashes it before anything leaves cdcd);
* dirty rows: every ``DIRTY_EVERY``-th order has a negative ``total`` (cdcd.toml's column rule
  ``min = 0`` sends it to the validation queue: ``cdcd dlq list``);
* a schema change: after ``SCHEMA_CHANGE_AFTER`` seconds it adds the column ``coupon`` and
  fills it from then on (cdcd adds it to the destinations, ``schema_changes = "propagate"``).

Runs in the cdcd image (it has the Scylla driver): ``python /workload.py``.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from decimal import Decimal

from cassandra.cluster import Cluster

HOST = os.environ.get("SCYLLA_HOST", "scylla")
RATE = float(os.environ.get("RATE", "5"))  # changes per second
DIRTY_EVERY = int(os.environ.get("DIRTY_EVERY", "20"))
SCHEMA_CHANGE_AFTER = float(os.environ.get("SCHEMA_CHANGE_AFTER", "120"))


def main() -> None:
    for _ in range(60):
        try:
            session = Cluster([HOST], protocol_version=4).connect("shop")
            break
        except Exception as exc:
            print(f"waiting for Scylla: {exc}", flush=True)
            time.sleep(5)
    else:
        raise SystemExit("Scylla did not answer")
    insert = session.prepare(
        "INSERT INTO orders (customer_id, order_id, status, total, items, tags, email, created_at) "
        "VALUES (?, now(), 'new', ?, ?, ?, ?, toTimestamp(now()))"
    )
    rng = random.Random()
    customers = [uuid.uuid4() for _ in range(50)]
    started, n, coupons = time.monotonic(), 0, None
    while True:
        n += 1
        customer = rng.choice(customers)
        total = Decimal(rng.randint(100, 99_999)) / 100
        if n % DIRTY_EVERY == 0:
            total = -total  # refused by the column rule: the validation queue
        items = {rng.choice(["book", "pen", "mug", "lamp"]): rng.randint(1, 3)}
        session.execute(insert, (customer, total, items, {"web"}, f"user{n}@example.com"))
        if n % 5 == 0:
            rows = list(
                session.execute("SELECT order_id FROM orders WHERE customer_id = %s LIMIT 3", (customer,))
            )
            if rows:
                victim = rng.choice(rows).order_id
                if n % 15 == 0:
                    session.execute(
                        "DELETE FROM orders WHERE customer_id = %s AND order_id = %s", (customer, victim)
                    )
                else:
                    session.execute(
                        "UPDATE orders SET status = %s WHERE customer_id = %s AND order_id = %s",
                        (rng.choice(["paid", "shipped"]), customer, victim),
                    )
        if coupons is None and time.monotonic() - started > SCHEMA_CHANGE_AFTER:
            session.execute("ALTER TABLE orders ADD coupon text")
            print("schema change: added shop.orders.coupon", flush=True)
            coupons = session.prepare(
                "UPDATE orders SET coupon = ? WHERE customer_id = ? AND order_id = now()"
            )
        if coupons is not None and n % 3 == 0:
            session.execute(coupons, (f"SAVE{rng.randint(5, 30)}", customer))
        time.sleep(1 / RATE)


if __name__ == "__main__":
    main()
