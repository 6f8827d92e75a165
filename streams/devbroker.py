"""A real single-node Apache Kafka broker (KRaft) for development, demos and tests.

The jars come from Maven Central through ``deploy/kafka/pom.xml`` (no tarball, no Docker), are cached in
``deploy/kafka/.cache/libs`` and the broker runs as a detached ``java -cp`` process, so ``broker start``
can return while the broker keeps serving. Its run folder (``broker.json``, ``broker.log``, data) lives
under the state directory so ``stop``/``status`` find it again from another process.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_HOME = Path(os.environ.get("INTEREST_KAFKA_HOME", REPO_ROOT / "deploy" / "kafka"))
READY_LINE = "Kafka Server started"


class BrokerError(RuntimeError):
    """The local broker could not be installed, started or reached."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_jars(home: Path = KAFKA_HOME) -> Path:
    """Resolve the broker's jars with Maven once; later calls reuse the cached folder."""
    libs = home / ".cache" / "libs"
    if libs.is_dir() and any(libs.glob("kafka_2.13-*.jar")):
        return libs
    if shutil.which("mvn") is None:
        raise BrokerError("Maven (mvn) is needed to fetch Kafka from Maven Central; install it first")
    tmp = libs.with_name("libs.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        "mvn", "-q", "-B", "-f", str(home / "pom.xml"), "dependency:copy-dependencies",
        "-DincludeScope=runtime", f"-DoutputDirectory={tmp}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BrokerError(f"mvn could not resolve Kafka:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    return libs


def _cluster_id() -> str:
    """A random KRaft cluster id: 16 bytes, URL-safe base64.

    One id in 64 would start with "-", which the storage tool's argument parser reads as an option
    ("--cluster-id: expected one argument"); Kafka's own generator redraws those, and so do we.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _server_properties(data_dir: Path, port: int, controller_port: int) -> str:
    # Replication factor 1 everywhere: a single node must host the offsets and transaction topics, or
    # consumer groups and transactional producers (exactly-once) never become ready.
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={data_dir}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=4",
            "group.initial.rebalance.delay.ms=0",
            "log.cleaner.enable=true",
            "auto.create.topics.enable=false",  # topics are declared with their partition counts
            "",
        ]
    )


def _read_properties(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


@dataclass
class BrokerInfo:
    pid: int
    bootstrap: str
    run_dir: str
    started_s: float

    def alive(self) -> bool:
        try:
            # Reap it first when it is our own exited child, or kill(0) would see the zombie.
            if os.waitpid(self.pid, os.WNOHANG)[0] == self.pid:
                return False
        except ChildProcessError:
            pass
        try:
            os.kill(self.pid, 0)
        except OSError:
            return False
        return True


class LocalBroker:
    """Start, find and stop the development broker that lives in ``run_dir``."""

    def __init__(self, run_dir: str | Path, home: Path = KAFKA_HOME) -> None:
        self.run_dir = Path(run_dir)
        self.home = home
        self.info_path = self.run_dir / "broker.json"
        self.log_path = self.run_dir / "broker.log"

    def status(self) -> BrokerInfo | None:
        if not self.info_path.exists():
            return None
        info = BrokerInfo(**json.loads(self.info_path.read_text()))
        return info if info.alive() else None

    def start(self, port: int | None = None, timeout_s: float = 120.0, fresh: bool = False) -> BrokerInfo:
        """Start the broker (or return the one already running) once it serves clients.

        Like a real broker it keeps its topics, offsets and port across a stop and a start; ``fresh``
        wipes them (and ``port`` picks another port) first.
        """
        running = self.status()
        if running is not None:
            return running
        libs = ensure_jars(self.home)
        t0 = time.monotonic()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        data_dir = self.run_dir / "data"
        props = self.run_dir / "server.properties"
        keep = not fresh and port is None and props.exists() and (data_dir / "meta.properties").exists()
        java = [
            "java", "-Xms256m", "-Xmx1g",
            f"-Dlog4j.configuration=file:{self.home / 'log4j.properties'}",
            "-cp", f"{libs}/*",
        ]  # fmt: skip
        if keep:
            port = int(_read_properties(props)["listeners"].split(",")[0].rsplit(":", 1)[1])
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
            port = port or free_port()
            props.write_text(_server_properties(data_dir, port, free_port()))
            fmt = subprocess.run(
                [*java, "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(props)],
                capture_output=True,
                text=True,
            )
            if fmt.returncode != 0:
                raise BrokerError(f"formatting the KRaft storage failed: {fmt.stdout}{fmt.stderr}")
        log_start = self.log_path.stat().st_size if keep and self.log_path.exists() else 0
        with open(self.log_path, "ab" if keep else "wb") as log:  # the child keeps its own handle
            proc = subprocess.Popen(
                [*java, "kafka.Kafka", str(props)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives `broker start` and ignores the terminal's Ctrl-C
            )
        bootstrap = f"127.0.0.1:{port}"
        try:
            self._wait_ready(proc, bootstrap, t0 + timeout_s, log_start)
        except BaseException:
            proc.terminate()
            proc.wait(30)
            raise
        info = BrokerInfo(proc.pid, bootstrap, str(self.run_dir), round(time.monotonic() - t0, 2))
        self.info_path.write_text(json.dumps(info.__dict__))
        return info

    def _wait_ready(
        self, proc: subprocess.Popen, bootstrap: str, deadline: float, log_start: int = 0
    ) -> None:
        # The port opens before the broker is unfenced: wait for its own "started" line, then make
        # one real client round trip.
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BrokerError(f"broker exited with {proc.returncode}; see {self.log_path}")
            with open(self.log_path, "rb") as fh:
                fh.seek(log_start)
                started = READY_LINE.encode() in fh.read()
            if started:
                break
            time.sleep(0.2)
        else:
            raise BrokerError(f"broker not started within the timeout; see {self.log_path}")
        from kafka import KafkaAdminClient

        while time.monotonic() < deadline:
            try:
                admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
                admin.list_topics()
                admin.close()
                return
            except Exception:  # noqa: BLE001 - any client failure means "not yet"
                time.sleep(0.3)
        raise BrokerError(f"broker at {bootstrap} did not answer a client; see {self.log_path}")

    def stop(self, timeout_s: float = 60.0) -> bool:
        """SIGTERM the broker (a clean shutdown) and wait for it; False if none was running."""
        info = self.status()
        if info is None:
            self.info_path.unlink(missing_ok=True)
            return False
        os.kill(info.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while info.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if info.alive():
            os.kill(info.pid, signal.SIGKILL)
        self.info_path.unlink(missing_ok=True)
        return True
