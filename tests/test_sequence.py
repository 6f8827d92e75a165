"""The online sequential model: it must learn order from one pass, score unseen items by their text, and
be reproducible."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from models.events import Event, Item
from models.sequence import SequenceConfig, SequenceModel, gap_bucket

SMALL = SequenceConfig(dim=32, max_len=8, n_blocks=1, dropout=0.0, lr=1e-2, steps=2, replay=8, seed=1)
N_ITEMS = 40
TEXT_DIM = 16


def texts(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, TEXT_DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def cycle_stream(n_users: int, steps: int, seed: int = 0) -> list[list[tuple[Event, Item]]]:
    """Users walk one fixed cycle over the items from random starts: the next item is the successor of
    the last one. Batches of interleaved users, in event-time order."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(N_ITEMS)
    succ = {int(order[k]): int(order[(k + 1) % N_ITEMS]) for k in range(N_ITEMS)}
    pos = {u: int(rng.integers(N_ITEMS)) for u in range(n_users)}
    item = Item("t", "", ("c",))
    events, ts = [], 1_000_000.0
    for step in range(steps):
        for u in range(n_users):
            ts += 7.0
            events.append((Event(f"e{u}-{step}", f"u{u}", f"i{pos[u]}", ts, "click"), item))
            pos[u] = succ[pos[u]]
    return [events[k : k + 32] for k in range(0, len(events), 32)], succ


def new_model(config: SequenceConfig = SMALL) -> SequenceModel:
    model = SequenceModel(TEXT_DIM, config)
    model.add_items([(f"i{k}", v) for k, v in enumerate(texts(N_ITEMS))])
    return model


def hit_rate(model: SequenceModel, batches, succ) -> float:
    """Test-then-train: before each batch, is each event's item the top-scored one for its user?"""
    hits = total = 0
    for batch in batches:
        for event, _ in batch:
            if model.history.get(event.user_id):
                total += 1
                hits += int(np.argmax(model.scores(event.user_id)) == model.index[event.item_id])
        model.learn(batch)
    return hits / total


def test_learns_the_order_of_events_online_in_one_pass():
    batches, succ = cycle_stream(n_users=30, steps=40)
    model = new_model()
    early = hit_rate(model, batches[:3], succ)
    hit_rate(model, batches[3:25], succ)
    late = hit_rate(model, batches[25:], succ)
    assert early < 0.3 and late > 0.8, (early, late)  # chance is 1/40


def test_same_stream_same_seed_same_model():
    batches, _ = cycle_stream(n_users=10, steps=10)
    a, b = new_model(), new_model()
    for batch in batches:
        a.learn(batch)
        b.learn(batch)
    np.testing.assert_array_equal(a.scores("u3"), b.scores("u3"))
    c = new_model(replace(SMALL, seed=2))
    for batch in batches:
        c.learn(batch)
    assert not np.array_equal(a.scores("u3"), c.scores("u3"))


def test_an_item_never_seen_is_scored_through_its_text():
    """Items come in 4 text clusters; a user's next item is always from the cluster after the last
    one's. A new item (never in any event) must outrank new items of the other clusters when it belongs
    to the cluster that comes next."""
    rng = np.random.default_rng(5)
    centres = texts(4, seed=9)
    cluster = {k: k % 4 for k in range(N_ITEMS)}

    def text_of(c: int) -> np.ndarray:
        v = centres[c] + 0.15 * rng.normal(size=TEXT_DIM)
        return (v / np.linalg.norm(v)).astype(np.float32)

    model = SequenceModel(TEXT_DIM, replace(SMALL, steps=3, id_buckets=1 << 10))
    model.add_items([(f"i{k}", text_of(cluster[k])) for k in range(N_ITEMS)])
    item = Item("t", "", ("c",))
    ts, batch = 0.0, []
    for step in range(60):
        for u in range(20):
            ts += 1
            c = (u + step) % 4
            k = int(rng.choice([i for i in range(N_ITEMS) if cluster[i] == c]))
            batch.append((Event(f"e{u}-{step}", f"u{u}", f"i{k}", ts, "click"), item))
        if len(batch) >= 40:
            model.learn(batch)
            batch = []
    model.add_items([(f"new{c}", text_of(c)) for c in range(4)])
    wins = 0
    for u in range(20):
        last = model.history[f"u{u}"][-1][0]
        want = (cluster[last] + 1) % 4
        s = model.scores(f"u{u}")
        new_scores = {c: s[model.index[f"new{c}"]] for c in range(4)}
        wins += int(max(new_scores, key=new_scores.get) == want)
    assert wins >= 16, wins  # chance: 5 of 20


def test_an_item_counts_its_id_embedding_only_once_an_event_on_it_is_learned():
    """With ``id_needs_event``, until an item has an event it is its text projection, exactly, also in a
    snapshot a worker loads (by default its ID term counts from the start)."""
    batches, _ = cycle_stream(n_users=10, steps=6)
    model = new_model(replace(SMALL, id_buckets=1 << 12, id_needs_event=True))
    default = new_model(replace(SMALL, id_buckets=1 << 12))
    default.add_items([("untouched", texts(1, seed=3)[0])])
    model.add_items([("untouched", texts(1, seed=3)[0])])
    for batch in batches:
        model.learn(batch)
        default.learn(batch)
    net, row = model.net, model.index["untouched"]
    text = torch.from_numpy(model._text[row])[None]
    with torch.no_grad():
        text_only = net.text_proj(text)[0].numpy()
        id_term = net.id_emb.weight[model.bucket("untouched")].numpy()
    assert np.abs(id_term).max() > 0  # a slot with weights, which must not count yet
    np.testing.assert_allclose(model.item_vectors()[row], text_only, rtol=0, atol=1e-6)
    with torch.no_grad():
        d = default.net
        with_id = (d.text_proj(text)[0] + d.id_emb.weight[default.bucket("untouched")]).numpy()
    np.testing.assert_allclose(default.item_vectors()[row], with_id, rtol=0, atol=1e-6)
    served = SequenceModel.from_bytes(model.to_bytes())
    got = served.item_vectors_of(["untouched", "i0"], np.stack([model._text[row], model._text[0]]))
    np.testing.assert_allclose(got[0], text_only, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[1], model.item_vectors()[model.index["i0"]], rtol=0, atol=1e-6)
    # Its first event is learned: from then on the ID term counts.
    model.learn([(Event("e-new", "u0", "untouched", 1e9, "click"), Item("t", "", ("c",)))])
    with torch.no_grad():  # (the step moved the projection too)
        expected = (net.text_proj(text)[0] + net.id_emb.weight[model.bucket("untouched")]).numpy()
    np.testing.assert_allclose(model.item_vectors()[row], expected, rtol=0, atol=1e-6)


def test_a_snapshot_from_before_the_id_flags_counts_every_id():
    model = new_model()
    raw = model.to_bytes()
    head_len = int.from_bytes(raw[5:9], "little")
    header = json.loads(raw[9 : 9 + head_len])
    # The same snapshot without the flags tensor, as a trainer from before the flags wrote it.
    state = {k: v for k, v in model.net.state_dict().items() if k != "id_learned"}
    header["tensors"] = [[k, list(v.shape)] for k, v in state.items()]
    head = json.dumps(header, sort_keys=True).encode()
    old = (
        raw[:5]
        + len(head).to_bytes(4, "little")
        + head
        + b"".join(v.numpy().tobytes() for v in state.values())
    )
    loaded = SequenceModel.from_bytes(old)
    assert bool((loaded.net.id_learned == 1.0).all())
    model.net.id_learned.fill_(1.0)  # what the old model scored with
    ids, text = [f"i{k}" for k in range(5)], texts(5)
    np.testing.assert_array_equal(loaded.item_vectors_of(ids, text), model.item_vectors_of(ids, text))


def test_id_dropout_of_one_trains_only_the_text_path():
    batches, _ = cycle_stream(n_users=10, steps=6)
    model = new_model(replace(SMALL, id_dropout=1.0, id_needs_event=True))
    before = model.net.id_emb.weight.detach().clone()
    proj = model.net.text_proj.weight.detach().clone()
    for batch in batches:
        model.learn(batch)
    assert torch.equal(model.net.id_emb.weight, before)  # every ID term hidden: no gradient reaches one
    assert not torch.equal(model.net.text_proj.weight, proj)
    assert bool(model.net.id_learned[[model.bucket(f"i{k}") for k in range(N_ITEMS)]].any())


def test_sampled_softmax_beyond_the_full_softmax_size_still_learns():
    batches, succ = cycle_stream(n_users=30, steps=40)
    model = new_model(replace(SMALL, full_softmax_max=10, negatives=16))
    hit_rate(model, batches[:25], succ)
    assert hit_rate(model, batches[25:], succ) > 0.6


def test_a_user_without_events_gets_a_zero_vector_and_windows_are_bounded():
    model = new_model()
    assert not model.user_vectors(["nobody"]).any()
    batches, _ = cycle_stream(n_users=2, steps=30)
    for batch in batches:
        model.learn(batch)
    assert len(model.history["u0"]) == SMALL.max_len + 1
    assert model.scores("u0").shape == (N_ITEMS,)


@pytest.mark.parametrize(("seconds", "bucket"), [(0, 0), (1, 1), (3, 2), (86_400, 16), (1e12, 23)])
def test_time_gaps_fall_in_log2_buckets(seconds, bucket):
    assert gap_bucket(seconds) == bucket


def test_other_random_draws_in_the_process_do_not_change_what_it_learns():
    import torch

    batches, _ = cycle_stream(n_users=10, steps=10)
    a, b = new_model(replace(SMALL, dropout=0.3)), new_model(replace(SMALL, dropout=0.3))
    for batch in batches:
        a.learn(batch)
        torch.rand(1000)  # someone else's dropout, say
        b.learn(batch)
    np.testing.assert_array_equal(a.scores("u3"), b.scores("u3"))


def test_snapshot_gives_workers_the_same_vectors_from_windows_they_hold():
    batches, _ = cycle_stream(n_users=12, steps=10)
    model = new_model()
    for batch in batches:
        model.learn(batch)
    served = SequenceModel.from_bytes(model.to_bytes())
    assert served.learned_events == model.learned_events and served.config == model.config
    text = {item_id: texts(N_ITEMS)[row] for item_id, row in model.index.items()}
    ids = sorted(model.index, key=model.index.get)
    for user in ("u0", "u5"):
        window = [(ids[i], text[ids[i]], kind, ts) for i, kind, ts in model.history[user]]
        np.testing.assert_allclose(served.user_vectors_of([window])[0], model.user_vectors([user])[0],
                                   atol=1e-6)  # fmt: skip
        item_vectors = served.item_vectors_of(ids, np.stack([text[i] for i in ids]))
        scores = item_vectors @ served.user_vectors_of([window])[0]
        np.testing.assert_allclose(scores, model.scores(user), atol=1e-5)
    with pytest.raises(ValueError, match="not a sequence-model snapshot"):
        SequenceModel.from_bytes(b"garbage")


@pytest.mark.parametrize("saved_as", ["arrays", "lists (checkpoints before arrays)"])
def test_a_model_restored_from_its_checkpoint_learns_on_exactly_as_if_never_stopped(saved_as):
    import copy

    batches, _ = cycle_stream(n_users=12, steps=10)
    straight = new_model()
    for batch in batches:
        straight.learn(batch)
    first = new_model()
    for batch in batches[:2]:
        first.learn(batch)
    saved = copy.deepcopy({"weights": first.to_bytes(), "opt": first.opt.state_dict(),
                           "rest": first.dump_histories()})  # fmt: skip
    if saved_as != "arrays":  # the format before: a list of step tuples per user, and the users' order
        rest = saved["rest"]
        columns = (rest["steps"][name].tolist() for name in ("row", "type", "ts"))
        flat = list(zip(*columns, strict=True))
        ends = np.cumsum(rest["lengths"]).tolist()
        rest["history"] = {u: flat[a:b] for u, a, b in zip(rest["users"], [0, *ends[:-1]], ends, strict=True)}
        rest["seen_users"] = rest.pop("users")
        del rest["steps"], rest["lengths"]
        assert rest["history"] == {u: list(h) for u, h in first.history.items()}
    resumed = SequenceModel.from_bytes(saved["weights"])
    resumed.opt.load_state_dict(saved["opt"])
    resumed.restore_histories(saved["rest"])
    for batch in batches[2:]:
        resumed.learn(batch)
    assert resumed.to_bytes() == straight.to_bytes()


def test_a_serving_copy_scores_without_making_an_optimiser(tmp_path):
    """Workers load snapshots to score, never to learn. Each used to make Adam with the model, which
    imports torch's compiler stack (0.93 s and +138 MB peak RSS beside an onnxruntime encoder, and triton's
    "nanobind: leaked" report at exit); now the optimiser is made where a model learns. In a fresh
    interpreter, since any earlier test in this one may have imported it."""
    import subprocess
    import sys

    script = """
import sys
import numpy as np
from models.sequence import SequenceModel

served = SequenceModel.from_bytes(SequenceModel(8).to_bytes())
text = np.eye(8, dtype=np.float32)[:3]
items = served.item_vectors_of(["a", "b", "c"], text)
users = served.user_vectors_of([[("a", text[0], 0, 0.0), ("b", text[1], 1, 60.0)]])
assert np.isfinite(items).all() and np.abs(users).sum() > 0
print(sorted(m for m in ("torch._dynamo", "triton") if m in sys.modules))
served.opt  # what learning makes
print(sorted(m for m in ("torch._dynamo",) if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "['torch._dynamo']"], out.stdout + out.stderr
