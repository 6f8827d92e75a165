import numpy as np

from models.config import InterestConfig
from models.interest import UserState
from models.ranker import NextItemRanker

CFG = InterestConfig()
DIM = 8


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def test_learns_what_follows_what():
    r = NextItemRanker(CFG, DIM)
    cycle = [f"i{k}" for k in range(12)]
    for user in range(30):  # every user walks the same cycle from a different start
        history: list[str] = []
        for step in range(12):
            item = cycle[(user + step) % 12]
            r.learn(history, item, unit(int(item[1:])))
            history = (history + [item])[-CFG.history_len :]
    for k, item in enumerate(cycle):
        top = r.recommend([cycle[k - 2], cycle[k - 1], item], None, 1, exclude=[cycle[k - 1], item])
        assert top[0][0] == cycle[(k + 1) % 12]
    assert r.n_items == 12
    assert r.popularity_scores().max() == 1.0


def test_counts_follow_the_documented_rule():
    cfg = InterestConfig(transition_window=2, transition_decay=0.5, transition_backward=0.25)
    r = NextItemRanker(cfg, DIM)
    for k, item in enumerate(["a", "b", "c"]):
        r.learn(["a", "b", "c"][:k], item, unit(k))
    a, b, c = (r.index[x] for x in "abc")
    assert r.successors[a] == {b: 1.0, c: 0.5}  # c follows a at distance 2
    assert r.successors[c] == {b: 0.25, a: 0.125}  # backward share
    assert r.successors[b] == {a: 0.25, c: 1.0}


def test_text_and_popularity_rank_items_nobody_followed_yet():
    cfg = InterestConfig(popularity_weight=0.0)
    r = NextItemRanker(cfg, DIM)
    r.add_items([(f"x{k}", unit(k)) for k in range(5)])
    s = r.scores([], unit(3))  # no sequence, interest vector equal to x3's text
    assert int(np.argmax(s)) == r.index["x3"]
    r2 = NextItemRanker(InterestConfig(text_weight=0.0), DIM)
    r2.add_items([(f"x{k}", unit(k)) for k in range(5)])
    for _ in range(3):
        r2.learn([], "x4", unit(4))
    assert r2.recommend([], None, 1) == [("x4", CFG.popularity_weight * 1.0)]


def test_state_keeps_recent_items_and_reads_format_1():
    s = UserState.empty(DIM, 16)
    cfg = InterestConfig(sequence_len=4)
    for k in range(12):
        s.add(f"e{k}", float(k), "click", unit(k), cfg, item_id=f"item-{k}")
    # items_kept = max(history_len 8, sequence_len 4): the ranker reads the last 8
    assert s.recent_items == [f"item-{k}" for k in range(4, 12)]
    back = UserState.from_bytes(s.to_bytes())
    assert back.recent_items == s.recent_items and back.recent_ids == s.recent_ids
    raw = s.to_bytes()
    # A format-1 record: header, vector, counts, ids; no model tag, offsets or item list.
    ids_end = 40 + 4 * DIM + 12 + 24 + 8 * len(s.recent_ids)
    old = bytearray(raw[:32] + raw[40 : 40 + 4 * DIM + 12] + raw[40 + 4 * DIM + 12 + 24 : ids_end])
    old[0] = 1
    v1 = UserState.from_bytes(bytes(old))
    assert v1.recent_items == [] and v1.events_applied == 12
