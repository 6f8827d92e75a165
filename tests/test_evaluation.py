import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score, log_loss, roc_auc_score

from evaluation.data import build_log, load_movielens
from evaluation.metrics import (
    CategoryPredictions,
    _Sorted,
    _weighted_auc,
    bootstrap_classification,
    bootstrap_means,
    classification_metrics,
    paired_accuracy_difference,
    rank_metrics,
    reliability,
)
from evaluation.protocols import _rank_all, loo_split, never_learned, tied_test_events
from evaluation.scorers import Histories
from models.events import Event, Item, event_order

REPO = Path(__file__).resolve().parent.parent


def test_rank_metrics_exact_and_under_ties():
    s = np.array([0.9, 0.8, 0.7, 0.1, 0.5])
    m = rank_metrics(s, target=4, masked=[0])  # item 0 masked: target ranks 3rd (0.8, 0.7 above)
    assert m["recall@10"] == 1.0 and m["mrr"] == pytest.approx(1 / 3)
    assert m["ndcg@10"] == pytest.approx(1 / np.log2(4))
    flat = rank_metrics(np.zeros(100), target=7, masked=[1, 2, 3, 7])  # target never masks itself
    assert flat["recall@10"] == pytest.approx(10 / 97) and flat["recall@20"] == pytest.approx(20 / 97)
    assert flat["mrr"] == pytest.approx(np.mean(1 / np.arange(1, 98)))


def test_classification_metrics_match_sklearn_on_single_label_data():
    rng = np.random.default_rng(0)
    n, k = 400, 5
    logits = rng.normal(size=(n, k))
    labels = np.where(rng.random(n) < 0.6, logits.argmax(1), rng.integers(0, k, n))
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    truth = np.eye(k)[labels]
    pred = CategoryPredictions([str(c) for c in range(k)], proba, truth, np.arange(n) % 7)
    m = classification_metrics(pred)
    top = proba.argmax(1)
    assert m["acc@1"] == pytest.approx(np.mean(top == labels))
    assert m["macro_f1"] == pytest.approx(f1_score(labels, top, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(labels, top, average="weighted"))
    auc = np.mean([roc_auc_score(truth[:, c], proba[:, c]) for c in range(k)])
    assert m["auc_macro"] == pytest.approx(auc)
    assert m["log_loss"] == pytest.approx(log_loss(labels, proba, labels=list(range(k))))


def test_weighted_auc_equals_auc_of_the_repeated_sample():
    rng = np.random.default_rng(1)
    score = np.round(rng.random(60), 1)  # many ties
    label = (rng.random(60) < 0.4).astype(float)
    weight = rng.integers(0, 4, 60).astype(float)
    expected = roc_auc_score(np.repeat(label, weight.astype(int)), np.repeat(score, weight.astype(int)))
    got = _weighted_auc(score, label, weight, np.argsort(score, kind="stable"))
    assert got == pytest.approx(expected)
    assert _Sorted  # the sort cache the bootstrap shares


def test_bootstrap_is_seeded_and_brackets_the_mean():
    x = np.random.default_rng(2).random(300)
    a, b = bootstrap_means(x, 500, seed=3), bootstrap_means(x, 500, seed=3)
    assert a == b and a.low < a.value < a.high and a.value == pytest.approx(x.mean())


def test_paired_accuracy_difference_cancels_what_the_users_share():
    # 200 users of very different difficulty (share of events either model gets right); model a is
    # right on one more event in twenty than b, on every user. Paired, the difference is sure; the two
    # models' own intervals overlap because user difficulty spreads them.
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(200), 20)
    skill = rng.random(200)[users]
    coin = rng.random(len(users))
    a_right, b_right = coin < np.minimum(skill + 0.05, 1.0), coin < skill
    label = rng.integers(0, 2, len(users))
    truth = np.eye(2)[label]

    def pred(right: np.ndarray) -> CategoryPredictions:
        top = np.where(right, label, 1 - label)
        return CategoryPredictions(["x", "y"], 0.1 + 0.8 * np.eye(2)[top], truth, users)

    a, b = pred(a_right), pred(b_right)
    diff = paired_accuracy_difference(a, b, 200, 300, seed=1)
    assert diff.value == pytest.approx(a_right.mean() - b_right.mean())
    assert 0 < diff.low < diff.value < diff.high
    ia, ib = (bootstrap_classification(p, 200, 100, seed=1)["acc@1"] for p in (a, b))
    assert ia.low < ib.high  # unpaired, the intervals overlap


def test_reliability_measures_the_share_a_probability_stands_for():
    # Items of two categories out of four, drawn uniformly; a model that knows the pair and gives each
    # of its categories 0.5 predicts each category's share exactly: calibrated (ECE 0), although its top
    # category is always one of the item's (hit rate 1 against probability 0.5).
    rng = np.random.default_rng(0)
    pairs = [(0, 1), (1, 2), (2, 3), (0, 3)]
    truth = np.zeros((400, 4))
    for row, k in enumerate(rng.integers(0, 4, 400)):
        truth[row, list(pairs[k])] = 1
    exact = CategoryPredictions(list("abcd"), truth / 2, truth, np.arange(400) % 10)
    cal = reliability(exact)
    assert cal["ece"] == pytest.approx(0.0, abs=1e-9)
    assert cal["ece_hit"] == pytest.approx(0.5)
    assert [row[3] for row in cal["bins"]] == [400]
    # Overconfident: 0.9 on one category of the pair, whose share is 1/2: off by 0.4.
    sure = np.full((400, 4), 0.1 / 3)
    sure[np.arange(400), truth.argmax(axis=1)] = 0.9
    cal = reliability(CategoryPredictions(list("abcd"), sure, truth, np.arange(400) % 10))
    assert cal["ece"] == pytest.approx(0.4)


def _event(user: str, item: str, ts: float, cats=("c",)) -> tuple[str, dict]:
    return "click", {"event_id": f"{user}-{item}-{ts}", "user_id": user, "item_id": item, "ts": ts,
                     "item": {"title": f"item {item}", "categories": list(cats)}}  # fmt: skip


def test_loo_split_orders_by_time_then_event_id_as_the_core_does():
    records = [_event("u1", "10", 5), _event("u1", "9", 5), _event("u1", "1", 1), _event("u1", "2", 2),
               _event("u2", "1", 1), _event("u2", "2", 3), _event("bad", "x", "not a time")]  # fmt: skip
    log = build_log("t", records, {})
    assert log.rejected == {"bad_timestamp": 1}
    split = loo_split(log)
    # ts tie: event ids "u1-10-5" < "u1-9-5" as strings, the order InterestCore.apply takes them in
    assert [(e.user_id, e.item_id) for e, _ in split.test] == [("u1", "9")]
    assert [(e.user_id, e.item_id) for e, _ in split.val] == [("u1", "10")]
    assert tied_test_events(split) == 1
    batch = [pair for pair in log.events if pair[0].user_id == "u1"]
    core_order = sorted(batch, key=lambda pair: event_order(pair[0]))
    assert [e.item_id for e, _ in core_order][-2:] == ["10", "9"]
    assert sorted((e.user_id, e.item_id) for e, _ in split.train) == [("u1", "1"), ("u1", "2"),
                                                                        ("u2", "1"), ("u2", "2")]  # fmt: skip


def test_new_items_keep_their_catalogue_place_and_lose_every_training_event():
    rng = np.random.default_rng(4)
    records = [_event(f"u{u}", str(int(rng.integers(40))), float(t)) for u in range(30) for t in range(8)]
    log = build_log("t", records, {})
    plain, split = loo_split(log), loo_split(log, new_items=0.25, seed=7)
    assert len(split.new_items) == round(0.25 * len(log.items)) and split.new_items <= set(log.items)
    assert split.new_items == loo_split(log, new_items=0.25, seed=7).new_items  # seeded
    assert split.new_items != loo_split(log, new_items=0.25, seed=8).new_items
    assert not any(e.item_id in split.new_items for e, _ in split.train)
    assert split.train == [p for p in plain.train if p[0].item_id not in split.new_items]
    assert split.dropped == len(plain.train) - len(split.train) > 0
    assert (split.val, split.test) == (plain.val, plain.test)  # held-out events stay, new items included
    assert any(e.item_id in split.new_items for e, _ in split.test)
    with pytest.raises(ValueError, match="share of the catalogue"):
        loo_split(log, new_items=1.0)


def test_a_new_target_is_also_ranked_among_the_items_nobody_has_touched():
    index = {f"i{k}": k for k in range(40)}
    hist = Histories(index, 40)
    item = Item("t", "", ("c",))
    hist.learn([(Event(f"e{k}", f"u{k % 3}", f"i{k}", float(k), "click"), item) for k in range(20)])
    pool = never_learned(hist)
    assert pool.tolist() == [False] * 20 + [True] * 20

    class Fixed:  # known items first (100 - k), then the new ones by index (k)
        name = "fixed"

        def scores(self, user: str) -> np.ndarray:
            return np.array([100.0 - k if k < 20 else float(k) for k in range(40)])

    targets = [(Event(f"t{k}", "u9", f"i{k}", 99.0, "click"), item) for k in (35, 25, 3)]
    got = _rank_all([Fixed()], targets, hist, pool)["fixed"]
    # i35: 25th of all items (out of the top 10), 5th among the new ones; i25: 15th among them
    assert [m["recall@10"] for m in got] == [0.0, 0.0, 1.0]
    assert [m.get("new_items_recall@10") for m in got] == [1.0, 0.0, None]  # i3 is known: no such rank


def _synthetic_files(folder: Path) -> tuple[Path, Path]:
    """Users walk one of two item cycles (sequence signal) whose items carry the cycle's category."""
    rng = np.random.default_rng(0)
    items, events = [], []
    for genre in ("jazz", "rock"):
        for k in range(15):
            items.append({"item_id": f"{genre}{k}", "title": f"{genre} album number {k}", "text": "",
                          "categories": [genre]})  # fmt: skip
    for u in range(40):
        genre = ("jazz", "rock")[u % 2]
        start = int(rng.integers(0, 15))
        for step in range(12):
            kind = ("click", "cart", "order")[int(rng.integers(0, 3))]
            events.append({"type": kind, "event_id": f"u{u}-{step}", "user_id": f"u{u}",
                           "item_id": f"{genre}{(start + step) % 15}", "ts": 1_700_000_000 + 3600 * step + u,
                           "context": {"device": "ios" if u % 3 else "web"}})  # fmt: skip
    ev, it = folder / "events.jsonl", folder / "items.jsonl"
    ev.write_text("".join(json.dumps(e) + "\n" for e in events))
    it.write_text("".join(json.dumps(i) + "\n" for i in items))
    return ev, it


def _evaluate(tmp_path: Path, out: str, *extra: str) -> subprocess.CompletedProcess:
    ev, it = tmp_path / "events.jsonl", tmp_path / "items.jsonl"
    env = dict(os.environ, HF_HUB_OFFLINE="1", INTEREST_STATE_DIR=str(tmp_path / "state"))
    cmd = [sys.executable, "-m", "streams.cli", "evaluate", "--events", str(ev), "--items", str(it),
           "--out", str(tmp_path / out), "--quiet", *extra]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_evaluate_command_on_user_files(tmp_path):
    _synthetic_files(tmp_path)
    run = _evaluate(tmp_path, "a", "--sasrec-epochs", "3")
    assert run.returncode == 0, run.stderr
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    for model in ("default", "popularity", "last_item", "static_mean", "item_knn", "sasrec", "sequence",
                  "mix 0.5"):  # fmt: skip
        assert set(metrics["loo"][model]) == {"recall@10", "recall@20", "ndcg@10", "mrr", "n_users"}
        assert metrics["loo"][model]["n_users"] == 40
    for model in ("default", "popularity", "most_frequent", "last_category"):
        assert set(metrics["prequential"][model]) == {"acc@1", "hit@5", "macro_f1", "weighted_f1",
                                                      "auc_macro", "log_loss", "n_events"}  # fmt: skip
        assert metrics["prequential"][model]["n_events"] == 480
    # The cycles are learnable: the sequence model finds the next album, popularity cannot.
    assert metrics["loo"]["default"]["recall@10"] > 0.9 > 0.5 > metrics["loo"]["popularity"]["recall@10"]
    # A user's genre is fixed: once seen, the head should know it (each first event is a coin flip).
    assert (
        metrics["prequential"]["default"]["acc@1"] > 0.8 > 0.6 > metrics["prequential"]["popularity"]["acc@1"]
    )
    report = (tmp_path / "a" / "eval-events.md").read_text()
    assert "| default |" in report and "## Goals" in report
    assert {p.name for p in (tmp_path / "a").glob("*.png")} == {
        "eval-events-loo.png", "eval-events-cold-warm.png", "eval-events-learning.png",
        "eval-events-calibration.png", "eval-events-prequential.png"}  # fmt: skip
    curve = json.loads((tmp_path / "a" / "eval-events.json").read_text())["loo_learning_curve"]
    assert set(curve) == {"_ends", "default", "popularity", "item_knn", "sequence", "mix 0.5"}
    (tmp_path / "a").rename(tmp_path / "first")
    again = _evaluate(tmp_path, "a", "--sasrec-epochs", "3")  # the same command again
    assert again.returncode == 0, again.stderr
    for name in ("metrics.json", "eval-events.json", "eval-events.md"):
        assert (tmp_path / "first" / name).read_text() == (tmp_path / "a" / name).read_text(), name


def test_evaluate_movielens_shortcut(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    args = "--dataset movielens --max-users 25 --protocol loo --no-sasrec --no-ablations --quiet"
    cmd = [sys.executable, "-m", "streams.cli", "evaluate", *args.split(), "--out", str(tmp_path)]
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "prequential" not in metrics and metrics["loo"]["default"]["n_users"] == 25
    numbers = json.loads((tmp_path / "eval-movielens.json").read_text())
    assert numbers["loo_split"]["test"] == 25 and numbers["rejected"] == {}
    assert numbers["data_notes"]["tag_rule"].startswith("Item text uses only tags")


def test_evaluate_with_new_items_writes_its_own_report(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    args = (
        "--dataset movielens --max-users 40 --protocol loo --no-sasrec --no-ablations --quiet --new-items 0.2"
    )
    cmd = [sys.executable, "-m", "streams.cli", "evaluate", *args.split(), "--out", str(tmp_path)]
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    numbers = json.loads((tmp_path / "eval-movielens-new-items20.json").read_text())
    split = numbers["loo_split"]
    assert split["new_items"] == round(0.2 * numbers["items"]) and split["train_dropped_new_items"] > 0
    default = numbers["loo"]["default"]
    assert default["n_cold"] >= 1 and default["cold_new_items_recall@10"][0] is not None
    assert "**New items**" in (tmp_path / "eval-movielens-new-items20.md").read_text()
    bad = subprocess.run([*cmd, "--new-items", "1.5"], cwd=REPO, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "share of the catalogue" in bad.stderr


def test_dense_variant_keeps_the_most_interacted_items_and_all_their_events():
    from evaluation.data import EventLog
    from models.events import Event, Item

    item = Item("t", "", ("c",))
    events = [(Event(f"e{k}", f"u{k % 3}", item_id, float(k), "click"), item)
              for k, item_id in enumerate(["1", "2", "2", "3", "3", "3", "10", "10", "10"])]  # fmt: skip
    dense = EventLog("x", events, ["1", "2", "3", "10"]).most_interacted(2)
    assert dense.items == ["3", "10"]  # tie at 3 events: item id order
    assert [e.event_id for e, _ in dense.events] == ["e3", "e4", "e5", "e6", "e7", "e8"]
    assert dense.name == "x-dense2"


def test_category_baselines_predict_from_the_past_only():
    from evaluation.protocols import _category_baselines
    from models.events import Event, Item

    seq = [("u1", ("a",)), ("u2", ("a", "b")), ("u1", ("c",)), ("u1", ("a",)), ("u2", ("c",))]
    applied = [
        (Event(f"e{n}", u, f"i{n}", float(n), "click"), Item("t", "", cats))
        for n, (u, cats) in enumerate(seq)
    ]
    out = _category_baselines(applied, ["a", "b", "c"])
    top = {name: [int(np.argmax(p)) for p in proba] for name, proba in out.items()}
    # global counts before each event: -, a1, a1.5 b.5, a1.5 b.5 c1, a2.5 b.5 c1
    assert top["popularity"][1:] == [0, 0, 0, 0]
    assert top["most_frequent"][3] == 0  # u1 had a (1) and c (1): tie, broken by the global prior (a)
    assert top["last_category"][3] == 2 and top["last_category"][4] in (0, 1)  # u1 last: c; u2 last: a/b
    np.testing.assert_allclose(out["popularity"].sum(axis=1), 1.0)


def test_evaluate_explains_bad_input(tmp_path):
    (tmp_path / "events.jsonl").write_text(json.dumps(_event("u", "i", 1)[1] | {"type": "click"}) + "\n")
    (tmp_path / "items.jsonl").write_text('{"item_id": "i"}\n')
    run = _evaluate(tmp_path, "out")
    assert run.returncode == 2 and "items.jsonl:1: not an item line" in run.stderr
    (tmp_path / "items.jsonl").write_text('{"item_id": "i", "title": "A thing", "categories": ["c"]}\n')
    run = _evaluate(tmp_path, "out", "--protocol", "loo")
    assert run.returncode == 2 and "at least 3 events" in run.stderr


def test_deployed_replay_with_one_partition_is_the_single_head_and_replicas_share_when_synced(encoder):
    from evaluation.protocols import replay_partitioned
    from models.cache import CachedEncoder
    from models.config import InterestConfig
    from models.core import InterestCore
    from models.events import Event, Item

    core = InterestCore(InterestConfig(), CachedEncoder(encoder))
    genres = ["Drama", "Comedy", "Action", "Horror"]
    items = [Item(f"Film {k}", categories=(genres[k % 4],)) for k in range(8)]
    events = [(Event(f"e{n}", f"u{n % 9}", f"i{n % 8}", 1e9 + n, "click"), items[(n * 3 + n // 9) % 8])
              for n in range(400)]  # fmt: skip
    embeddings = core.embed(items)
    one, _ = replay_partitioned(core, events, embeddings, partitions=1, sync_every=0, batch_size=50)
    head, states, reference = core.new_head(), {}, {}
    for k in range(0, len(events), 50):
        out = core.apply(events[k : k + 50], embeddings, states, head)
        states.update(out.states)
        reference.update({e.event_id: p for (e, _), p in zip(out.applied, out.predictions, strict=True)})
    for event_id, (_, p) in one.items():
        np.testing.assert_array_equal(p, reference[event_id])
    _, apart = replay_partitioned(core, events, embeddings, partitions=3, sync_every=0, batch_size=50)
    _, shared = replay_partitioned(core, events, embeddings, partitions=3, sync_every=100, batch_size=50)
    assert sum(h.stats.n for h in shared) == sum(h.stats.n for h in apart) == 400  # each event once
    every = {c for h in apart for c in h.classes}
    assert any(set(h.classes) != every for h in apart)  # alone, a replica misses what others saw
    assert all(set(h.classes) == every for h in shared)  # synced, each one knows every category


def test_movielens_item_text_leaves_out_tags_that_leak_the_held_out_events(tmp_path: Path):
    (tmp_path / "movies.csv").write_text(
        "movieId,title,genres\n1,One (1990),Drama\n2,Two (1991),Comedy\n3,Three (1992),Drama\n"
    )
    # user 7: 1, 2 (validation, t=20), 3 (test, t=30); user 8 rates 3 at t=40 (training: only 1 event)
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n7,1,4.0,10\n7,2,4.0,20\n7,3,5.0,30\n8,3,3.0,40\n"
    )
    (tmp_path / "tags.csv").write_text(
        "userId,movieId,tag,timestamp\n"
        "9,3,early,5\n"  # before the first held-out event on 3: kept
        "9,3,late,35\n"  # after it: dropped
        "7,3,mine,1\n"  # by the user 3 is held out from, however early: dropped
        "8,1,never held,99\n"  # movie 1 is never held out: kept
    )
    log = load_movielens(tmp_path)
    text = {e.item_id: item.text for e, item in log.events}
    assert text == {"1": "never held", "2": "", "3": "early"}
    assert sum(log.notes["tags_dropped"].values()) == 2


def test_learning_curve_ranks_each_batch_before_learning_it(tmp_path: Path):
    from evaluation.data import load_jsonl
    from evaluation.protocols import run_loo
    from evaluation.run import _learning_curve
    from evaluation.scorers import ItemKNN, Popularity

    log = load_jsonl(*_synthetic_files(tmp_path))
    result = run_loo(log, lambda h: [ItemKNN(h), Popularity(h)], batch_size=20, curve_models=("item_knn",))
    rows = result.curve["item_knn"]
    assert set(result.curve) == {"item_knn"}
    assert rows[0] == (0, 0, 0.0)  # nobody has a history before the first batch: nothing to rank
    assert all(scored <= 16 for _, scored, _ in rows[1:])
    curve = _learning_curve(result)["item_knn"]
    # The cycles are learned as the replay goes on: early events are ranked far worse than late ones.
    assert curve[0] < 0.5 < 0.9 < curve[-1]


def test_a_mix_ranks_items_outside_a_bounded_rankers_candidates_by_its_other_part():
    from types import SimpleNamespace

    from evaluation.scorers import Mix

    bounded = SimpleNamespace(scores=lambda user: np.array([3.0, 1.0, -np.inf, -np.inf]))
    dense = SimpleNamespace(scores=lambda user: np.array([0.0, 1.0, 2.0, 3.0]))
    mixed = Mix("mix", bounded, dense, 0.5).scores("u")
    assert np.isfinite(mixed).all()
    assert mixed[3] > mixed[2]  # outside the candidates: ranked by the other part
    assert mixed[0] > mixed[1]
    full = SimpleNamespace(scores=lambda user: np.array([3.0, 1.0, 0.0, -1.0]))
    z = (full.scores("u") - full.scores("u").mean()) / (full.scores("u").std() + 1e-12)
    np.testing.assert_array_equal(Mix("m", full, full, 1.0).scores("u"), z)  # unbounded: plain z-scores


def test_lagged_head_predicts_with_old_weights_and_learns_from_every_row():
    """``LaggedHead``: rows are predicted with the weights as they were at the last multiple of ``lag``
    rows (across calls), while the weights learn from every row as a plain head's do."""
    from evaluation.protocols import LaggedHead
    from models.head import SoftmaxHead, softmax_rows

    rng = np.random.default_rng(0)
    X = rng.normal(size=(10, 6)).astype(np.float32)
    cats = [("a",), ("b",), ("a", "c"), ("c",), ("a",), ("b",), ("b",), ("c",), ("a",), ("b",)]
    plain = SoftmaxHead(6, 0.1)
    snapshots = []
    for i in range(10):
        if i % 4 == 0:
            snapshots.append((plain.W.copy(), plain.b.copy()))
        plain.test_then_train_many(X[i : i + 1], cats[i : i + 1])
    lagged = LaggedHead(SoftmaxHead(6, 0.1), lag=4)
    served = []
    for start, end in ((0, 3), (3, 7), (7, 10)):  # calls that do not line up with the lag
        served += lagged.test_then_train_many(X[start:end], cats[start:end])
    np.testing.assert_allclose(lagged.W, plain.W, rtol=1e-5, atol=1e-7)
    assert [len(p) for p in served] == [0] * 4 + [3] * 6  # no class before row 4; a, b, c after
    for i, p in enumerate(served[4:], start=4):
        W, b = snapshots[i // 4]
        np.testing.assert_allclose(p, softmax_rows(X[i : i + 1], W, b)[0], rtol=1e-5)
