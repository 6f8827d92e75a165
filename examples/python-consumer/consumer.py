"""A consumer of ``interest-updates`` that keeps a local map user -> latest recommendations.

What a recommender front end or a support tool would run: it reads the updates topic (JSON, key =
user_id, ``schemas/interest-update.schema.json``) and keeps, per user, the newest version only. Versions
never decrease per user, but after a worker crash a version can be published again, and a consumer
that restarts reads old ones first: so an update replaces the kept one only when its version is higher.

    python examples/python-consumer/consumer.py --brokers 127.0.0.1:9092
    python examples/python-consumer/consumer.py --idle-exit 10 --dump recommendations.json

It needs only kafka-python (``pip install kafka-python``), not this project.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from kafka import KafkaConsumer


class Recommendations:
    """user_id -> the newest update's recommendations (and the version and top interests with them)."""

    def __init__(self) -> None:
        self.users: dict[str, dict[str, Any]] = {}

    def apply(self, update: dict[str, Any]) -> bool:
        """Keep ``update`` if it is newer than what is kept for its user; True when it was."""
        kept = self.users.get(update["user_id"])
        if kept is not None and kept["version"] >= update["version"]:
            return False
        self.users[update["user_id"]] = {
            "version": update["version"],
            "events_applied": update["events_applied"],
            "top_interests": [t["category"] for t in update["top_interests"]],
            "recommendations": [r["item_id"] for r in update.get("recommendations", [])],
        }
        return True

    def for_user(self, user_id: str) -> list[str]:
        return self.users.get(user_id, {}).get("recommendations", [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("--topic", default=os.environ.get("INTEREST_UPDATES_TOPIC", "interest-updates"))
    parser.add_argument("--idle-exit", type=float, default=None, help="stop after this many idle seconds")
    parser.add_argument("--dump", help="write the map as JSON here at exit")
    args = parser.parse_args()
    consumer = KafkaConsumer(args.topic, bootstrap_servers=args.brokers, group_id=None,
                             auto_offset_reset="earliest", consumer_timeout_ms=500)  # fmt: skip
    recs = Recommendations()
    last = time.monotonic()
    try:
        while args.idle_exit is None or time.monotonic() - last < args.idle_exit:
            for msg in consumer:
                last = time.monotonic()
                update = json.loads(msg.value)
                if recs.apply(update):
                    print(f"{update['user_id']} v{update['version']}: {recs.for_user(update['user_id'])[:5]}",
                          flush=True)  # fmt: skip
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
        if args.dump:
            with open(args.dump, "w") as fh:
                json.dump(recs.users, fh, indent=1)


if __name__ == "__main__":
    main()
