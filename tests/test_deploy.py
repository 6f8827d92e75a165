"""No Docker engine runs here, so check the deployment files against the code instead of running them."""

import base64
import json
import re
from pathlib import Path

import yaml

from streams.settings import Settings
from streams.topics import topic_specs

REPO = Path(__file__).resolve().parent.parent


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_worker_environment_is_understood_by_the_settings_object():
    services = compose()["services"]
    assert {"kafka", "topics", "worker-1", "worker-2", "trainer", "prometheus", "grafana"} <= set(services)
    env = {k: str(v) for k, v in services["worker-1"]["environment"].items()}
    assert all(k == "KAFKA_BOOTSTRAP_SERVERS" or k.startswith("INTEREST_") for k in env)
    settings = Settings.load(env)  # raises on an unknown or invalid setting
    for key, value in env.items():
        if key.startswith("INTEREST_"):
            assert str(getattr(settings, key.removeprefix("INTEREST_").lower())) == value
    host, port = settings.broker.split(":")
    assert host == "kafka"
    listeners = services["kafka"]["environment"]["KAFKA_LISTENERS"]
    assert (
        f":{port}" in listeners
        and "kafka:9092" in services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    )


def test_topic_job_creates_what_the_worker_expects():
    services = compose()["services"]
    env = {k: str(v) for k, v in services["worker-1"]["environment"].items()}
    settings = Settings.load(env)
    script = services["topics"]["command"][0]
    created = {k: v for k, v in re.findall(r"--topic (\S+) --partitions (\d+)", script) if "$" not in k}
    loop = re.search(r"for name in ([^;]+); do \$\$t --topic \$\$name --partitions (\d+)", script)
    for name in loop.group(1).split():
        created[name] = loop.group(2)
    specs = topic_specs(settings)
    assert {k: int(v) for k, v in created.items()} == {k: p for k, (p, _) in specs.items()}
    assert "cleanup.policy=compact" in script.split("--topic items")[1]


def test_workers_and_the_trainer_are_started_again_when_they_exit_on_purpose():
    """A worker exits with code 3 when its broker lost acknowledged state and with 1 when its stop
    outlasts its grace; a trainer with 1 likewise. Each is meant to be started again."""
    services = compose()["services"]
    processes = {name: s for name, s in services.items() if s.get("command") in (["worker"], ["train"])}
    assert {s["command"][0] for s in processes.values()} == {"worker", "train"}
    assert all(s.get("restart") == "on-failure" for s in processes.values()), processes


def test_dockerfile_installs_the_package_and_runs_the_worker():
    text = (REPO / "deploy" / "Dockerfile").read_text()
    assert compose()["services"]["worker-1"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert 'ENTRYPOINT ["interest-stream"]' in text and 'CMD ["worker"]' in text
    for path in re.findall(r"^COPY (\S+)", text, re.M):
        assert (REPO / path).exists(), path
    assert "HF_HUB_OFFLINE=1" in text
    assert re.search(r"^USER (?!root)\w+", text, re.M), "the worker must not run as root"


def test_the_files_the_dockerfile_copies_build_the_package(tmp_path):
    """``pip install .`` in the image sees only what the Dockerfile copies: build a wheel from exactly that
    file set, so a package missing from the image fails here and not at ``docker build``."""
    import shutil
    import subprocess
    import sys
    import zipfile

    text = (REPO / "deploy" / "Dockerfile").read_text()
    context = tmp_path / "app"
    context.mkdir()
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, dest = line.split()
        for source in sources:
            target = context / dest / Path(source).name if dest.endswith("/") else context / dest
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(REPO / source, target)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    out = subprocess.run([*build, "-w", str(tmp_path / "dist"), str(context)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("interest_stream-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    import tomllib

    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    for package in packages:
        assert f"{package}/__init__.py" in names, package
    assert "streams/static/live.html" in names  # the live page ships with the package


def test_dev_broker_cluster_id_never_reads_as_an_option(monkeypatch):
    """An id starting with "-" made `kafka-storage format -t <id>` fail (a CI run hit one in 64)."""
    import uuid

    from streams import devbroker

    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x01" * 16)])
    monkeypatch.setattr(devbroker.uuid, "uuid4", lambda: next(draws))
    cluster_id = devbroker._cluster_id()
    assert not cluster_id.startswith("-")
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_two_workers_prometheus_and_grafana_see_the_same_metrics():
    """Each worker its own state and hostname (the query API forwards to hostname:6066); Prometheus scrapes
    every worker; every metric the dashboard plots is one the workers export."""
    from streams import metrics

    services = compose()["services"]
    workers = {n: s for n, s in services.items() if s.get("command") == ["worker"]}
    assert len(workers) == 2
    assert len({s["hostname"] for s in workers.values()}) == 2
    assert len({tuple(s["volumes"]) for s in workers.values()}) == 2  # RocksDB state is never shared
    prometheus = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert set(job["static_configs"][0]["targets"]) == {f"{s['hostname']}:6066" for s in workers.values()}
    dashboard = json.loads((REPO / "deploy" / "grafana" / "dashboards" / "interest-stream.json").read_text())
    used = {
        m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"interest_\w+", t["expr"])
    }
    assert used and used <= metrics.exported_names(), used - metrics.exported_names()
    assert {"interest_events_total", "interest_dead_letters_total", "interest_consumer_lag",
            "interest_prequential_hit1", "interest_users_in_state"} <= used  # fmt: skip
