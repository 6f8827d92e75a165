"""Operators' view on a real broker during a replay: ``/metrics`` (Prometheus) and the live page in a real
headless Chromium (Debian's package, driven by Playwright; no browser is downloaded)."""

from __future__ import annotations

import os
import shutil
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from faults import stop_worker
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from test_api import get, ready
from test_integration import send_events, send_items, start_worker, wait_for, worker_env
from test_model_sync import model_snapshots, start_trainer

from models.sources import movielens_events, movielens_items
from streams.settings import Settings
from streams.topics import ensure_topics

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# No sandbox (CI runs as root); nothing that reaches for the network behind the page's back (this machine
# refuses it, and a browser waiting on it slows every start).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def scrape(port: int) -> dict[str, float]:
    """Every sample of ``/metrics``, summed over labels: name -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


@pytest.mark.integration
def test_metrics_and_the_live_page_show_a_replay_as_it_happens(kafka_bootstrap, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: .ci/run installs Debian's chromium package")
        pytest.skip("no chromium binary (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    run = uuid.uuid4().hex[:8]
    extra = {"INTEREST_PARTITIONS": "2", "INTEREST_MAX_WAIT_S": "0.2",
             "INTEREST_MODEL_TOPIC": f"l-{run}-model", "INTEREST_MODEL_SYNC_S": "2"}  # fmt: skip
    env = worker_env(kafka_bootstrap, f"l-{run}", tmp_path, **extra)
    settings = Settings.load(env)
    ensure_topics(settings)
    items = movielens_items()
    records = sorted(movielens_events(max_users=8), key=lambda r: (r[1]["ts"], r[1]["event_id"]))
    head, tail = records[: len(records) // 2], records[len(records) // 2 :]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    send_items(producer, settings, items, {e["item_id"] for _, e in records})

    def send(batch) -> None:
        send_events(producer, settings, batch)

    stop_replay = threading.Event()

    def replay_slowly() -> None:  # a live stream: ~50 events/s, while the page is watched
        for start in range(0, len(tail), 10):
            if stop_replay.is_set():
                return
            send(tail[start : start + 10])
            time.sleep(0.2)

    logs = [tmp_path / "trainer.log", tmp_path / "worker.log"]
    send(head)
    trainer = start_trainer(env, logs[0])
    worker = start_worker(env, logs[1])
    replayer = threading.Thread(target=replay_slowly, daemon=True)
    port = int(env["INTEREST_WEB_PORT"])
    try:
        snapshot = lambda: model_snapshots(kafka_bootstrap, settings.model_topic)  # noqa: E731
        wait_for(lambda: bool(snapshot()), 180, "a model snapshot", logs[0])
        wait_for(lambda: ready(port) and "model snapshot" in logs[1].read_text(errors="replace")
                 and get(port, "/live/data")[1]["recent_users"], 180, "the worker", logs[1])  # fmt: skip
        replayer.start()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/live")
            page.wait_for_function("document.querySelector('#events').textContent !== '–'", timeout=30_000)
            first = int(page.inner_text("#events").replace(",", ""))
            count = "Number(document.querySelector('#events').textContent.replace(/,/g, ''))"
            page.wait_for_function(f"{count} > {first}", timeout=30_000)  # live: the numbers move
            # a user's recommendations, with titles from the catalogue, and their explanation
            page.wait_for_selector("#recommendations tr.rec", timeout=30_000)
            titles = {item.title for item in items.values()}
            # textContent, not innerText: innerText depends on layout (once it ran the "after ..." line
            # into the title), the catalogue's strings do not
            recommended = page.locator("#recommendations tr.rec td:first-child > .title").all_text_contents()
            assert recommended and all(t in titles for t in recommended)
            behind = page.locator("#recommendations tr.rec .because .title").all_text_contents()
            assert all(t in titles for t in behind)
            assert page.locator("#explanation tbody tr").count() >= 1
            assert page.inner_text("#model") not in ("–", "none yet")
            page.wait_for_timeout(2500)  # a few polls more: the charts have lines
            assert page.locator("#rate-chart polyline").count() == 1
            shot = tmp_path / "live-page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("LIVE_PAGE_SCREENSHOT"):  # how docs/live-page.png is made
                shutil.copy(shot, os.environ["LIVE_PAGE_SCREENSHOT"])
            browser.close()
        stop_replay.set()
        replayer.join(60)
        caught_up = lambda: get(port, "/live/data")[1]["lag"] == 0 == scrape(port)["interest_consumer_lag"]  # noqa: E731
        wait_for(caught_up, 120, "the worker to catch up", logs[1])
        m = scrape(port)
        data = get(port, "/live/data")[1]
        assert m["interest_events_total"] == data["events"] >= len(head)
        assert m["interest_updates_total"] == data["updates"] > 0
        assert m["interest_event_to_update_seconds_count"] == data["applied"]
        # seconds, not decades: once it divided faust's timestamps (already seconds) by 1,000 again
        assert 0 < m["interest_event_to_update_seconds_sum"] / data["applied"] < 300
        assert m["interest_encoder_weights_loaded"] == 1  # the catalogue's misses were encoded
        assert m["interest_batch_records_count"] > 0 and m["interest_encode_seconds_count"] > 0
        assert m["interest_users_in_state"] >= 1
        assert 0 <= m["interest_prequential_hit1"] <= m["interest_prequential_hit5"] <= 1
        assert m["interest_model_snapshot"] >= 1 and m["interest_owned_partitions"] == 2
        assert m["interest_embedding_cache_misses"] + m["interest_embedding_cache_hits"] >= 1
    finally:
        stop_replay.set()
        for proc in (trainer, worker):
            stop_worker(proc)
        producer.close()
