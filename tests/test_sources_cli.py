import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.sources import (
    SourceError,
    movielens_events,
    movielens_items,
    rating_to_type,
    read_csv,
    read_jsonl,
)

REPO = Path(__file__).resolve().parent.parent


def test_movielens_mapping():
    assert [rating_to_type(r) for r in (5, 4.5, 4, 3.5, 3, 0.5)] == [
        "order",
        "order",
        "cart",
        "cart",
        "click",
        "click",
    ]
    first = next(movielens_events())
    assert first == ("cart", {"event_id": "ml-1-1", "user_id": "1", "item_id": "1", "ts": 964982703,
                              "context": {"source": "movielens"}})  # fmt: skip
    items = movielens_items()
    assert items["1"].title == "Toy Story (1995)" and "Animation" in items["1"].categories
    assert "pixar" in items["1"].text.lower()  # users' tags become the item text
    users = {e["user_id"] for _, e in movielens_events(max_users=3)}
    assert users == {"1", "2", "3"}


def test_csv_and_jsonl_files(tmp_path):
    csv_file = tmp_path / "e.csv"
    csv_file.write_text(
        "event_id,user_id,item_id,ts,type,title,categories,device\n"
        "e1,u1,i1,1700000000,cart,Earbuds,audio|gadgets,ios\n"
        "e2,u1,i2,2024-01-01T00:00:00Z,,,,\n"
    )
    rows = list(read_csv(csv_file, default_type="click"))
    assert rows[0] == ("cart", {"event_id": "e1", "user_id": "u1", "item_id": "i1", "ts": 1700000000.0,
                                "item": {"title": "Earbuds", "text": "", "categories": ["audio", "gadgets"]},
                                "context": {"device": "ios"}})  # fmt: skip
    assert rows[1] == (
        "click",
        {"event_id": "e2", "user_id": "u1", "item_id": "i2", "ts": "2024-01-01T00:00:00Z"},
    )
    jl = tmp_path / "e.jsonl"
    jl.write_text(json.dumps({"type": "order", "event_id": "x"}) + "\n\n")
    assert list(read_jsonl(jl)) == [("order", {"event_id": "x"})]


def test_broker_cli_start_status_stop(tmp_path):
    env = dict(os.environ, INTEREST_BROKER_DIR=str(tmp_path / "b"))
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "streams.cli", "broker", *args], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=180)  # fmt: skip

    started = cli("start")
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("bootstrap=127.0.0.1:")
    bootstrap = started.stdout.strip().removeprefix("bootstrap=")
    try:
        status = cli("status")
        assert status.returncode == 0 and bootstrap in status.stdout
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        assert isinstance(admin.list_topics(), list)
        admin.close()
    finally:
        stopped = cli("stop")
    assert stopped.stdout.strip() == "stopped"
    assert cli("status").returncode == 1


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "e.jsonl",
            '{"type": "click", "event_id": "a"}\nnot json\n',
            r"e.jsonl:2: not JSON \(Expecting value",
        ),
        ("e.jsonl", '\n{"type": "click"}\n[1, 2]\n', r"e.jsonl:3: not a JSON object"),
        ("e.jsonl", '{"type": "view", "event_id": "a"}\n', r"e.jsonl:1: no valid 'type'"),
        ("e.csv", "user_id,item_id,ts,type\nu1,i1,1,click\n", r"e.csv:1: the header lacks event_id"),
        (
            "e.csv",
            "event_id,user_id,item_id,ts,type\ne1,u1,i1,1,click\ne2,u1,i2\n",
            r"e.csv:3: not the header's 5",
        ),
        ("e.csv", "event_id,user_id,item_id,ts,type\ne1,u1,i1,1,click,x\n", r"e.csv:2: not the header's 5"),
    ],
)
def test_a_line_that_cannot_become_an_event_is_named_by_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    reader = read_csv if name.endswith(".csv") else read_jsonl
    with pytest.raises(SourceError, match=message):
        list(reader(path))


def test_produce_checks_the_whole_file_before_it_sends_anything(tmp_path):
    """No broker listens at the address: the command never gets as far as one. Every line is read before
    the first is sent, so a bad line near the end does not leave the file half in Kafka."""
    events = tmp_path / "events.jsonl"
    good = json.dumps({"type": "click", "event_id": "e1", "user_id": "u1", "item_id": "i1", "ts": 1})
    events.write_text(good + "\n" + good.replace("e1", "e2") + "\n{oops\n")
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
    command = [sys.executable, "-m", "streams.cli", "produce", str(events)]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().startswith(f"produce: {events}:3: not JSON (")
    assert done.stderr.strip().endswith("; nothing was sent")
    missing = subprocess.run([*command[:-1], str(tmp_path / "none.jsonl")], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert missing.returncode == 1 and "No such file or directory" in missing.stderr
    assert "Traceback" not in done.stderr + missing.stderr


def test_a_command_with_no_broker_to_reach_says_so_in_one_line(tmp_path):
    """Nothing listens at the address. kafka-python gives up bootstrapping after 30 s, so ``tail`` and
    ``produce`` used to say "no Kafka broker answers" after 30 s; they now ask the address first, and say
    why at once."""
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
    for command in (["tail", "--idle-exit", "1"], ["produce", "--movielens", "--limit", "5", "--quiet"]):
        done = subprocess.run([sys.executable, "-m", "streams.cli", *command], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 2
        assert done.stderr.strip() == (
            f"{command[0]}: nothing listens at the broker's address (127.0.0.1:1: connection refused); start "
            "the local one with `interest-stream broker start`, or set KAFKA_BOOTSTRAP_SERVERS"
        )
