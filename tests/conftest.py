"""Shared fixtures: the real encoder (loaded once) and a real Kafka broker for integration tests.

The broker comes from, in order: ``KAFKA_BOOTSTRAP_SERVERS``; testcontainers' Kafka when a Docker engine
answers; else the local KRaft broker built from Maven Central jars (``streams.devbroker``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from models.encoder import TextEncoder


@pytest.fixture(scope="session")
def encoder() -> TextEncoder:
    return TextEncoder()


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:  # noqa: BLE001 - no engine, no socket, no permission: all mean "no Docker"
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    from streams.devbroker import LocalBroker

    broker = LocalBroker(tmp_path_factory.mktemp("kafka"))
    info = broker.start()
    print(f"\nlocal Kafka broker at {info.bootstrap} (started in {info.started_s}s)")
    try:
        yield info.bootstrap
    finally:
        broker.stop()
