import numpy as np
import pytest

from models.config import InterestConfig
from models.interest import UserState
from models.ranker import NextItemRanker, RecentItems, TextIndex

CFG = InterestConfig()
UNBOUNDED = InterestConfig(text_candidates=0, successors_kept=0)
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


def test_scores_between_events_are_those_of_a_ranker_that_learned_everything_at_once():
    """Scoring keeps each row's counts as arrays until the row changes; learning in between must show."""
    rng = np.random.default_rng(3)
    stream = [(f"u{rng.integers(6)}", f"i{rng.integers(15)}") for _ in range(300)]
    for cfg in (CFG, UNBOUNDED, InterestConfig(successors_kept=3)):
        live, recent = NextItemRanker(cfg, DIM), RecentItems(cfg.history_len)
        for n, (user, item) in enumerate(stream):
            live.learn(recent.items(user), item, unit(int(item[1:])))
            recent.add(user, float(n), item)
            if n % 10 == 9:
                again, replayed = NextItemRanker(cfg, DIM), RecentItems(cfg.history_len)
                for m, (u, i) in enumerate(stream[: n + 1]):
                    again.learn(replayed.items(u), i, unit(int(i[1:])))
                    replayed.add(u, float(m), i)
                for u in {u for u, _ in stream}:
                    history = recent.items(u)
                    assert np.array_equal(live.scores(history, unit(0)), again.scores(history, unit(0)))


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


def _random_log(seed: int, n: int = 400) -> list[tuple[str, float, str]]:
    rng = np.random.default_rng(seed)
    return [(f"u{rng.integers(12)}", float(rng.integers(1000)), f"i{rng.integers(40)}") for _ in range(n)]


def test_a_snapshot_ranks_exactly_as_the_ranker_it_was_taken_from():
    r = NextItemRanker(CFG, DIM)
    r.add_item("never-acted-on", unit(99))  # catalogue items without events travel too
    recent = RecentItems(CFG.history_len)
    for user, ts, item in sorted(_random_log(1), key=lambda e: e[1]):
        r.learn(recent.items(user), item, unit(int(item[1:])))
        recent.add(user, ts, item)
    back = NextItemRanker.from_bytes(r.to_bytes(), CFG)
    assert back.ids == r.ids and back.successors == r.successors
    for user in recent.of:
        history, interest = recent.items(user), unit(hash(user) % 1000)
        assert back.recommend(history, interest, 10, history) == r.recommend(history, interest, 10, history)
    with pytest.raises(ValueError, match="not a next-item ranker"):
        NextItemRanker.from_bytes(b"ISEQ1...", CFG)


def test_recent_items_come_back_from_a_trainers_checkpoint_as_they_were():
    r, recent = NextItemRanker(CFG, DIM), RecentItems(CFG.history_len)
    empty = RecentItems(CFG.history_len)
    empty.restore(recent.dump(r.index), r.ids)
    assert empty.of == {}
    for user, ts, item in _random_log(3):
        r.learn(recent.items(user), item, unit(int(item[1:])))
        recent.add(user, ts, item)
    back = RecentItems(CFG.history_len)
    back.restore(recent.dump(r.index), NextItemRanker.from_bytes(r.to_bytes(), CFG).ids)
    assert back.of == recent.of and list(back.of) == list(recent.of)
    assert all(type(ts) is float for kept in back.of.values() for ts, _ in kept)


def test_recent_items_keep_the_user_states_order_whatever_the_arrival_order():
    log = _random_log(2)
    states: dict[str, UserState] = {}
    recent = RecentItems(CFG.history_len)
    for k, (user, ts, item) in enumerate(reversed(log)):  # late events all the way
        state = states.setdefault(user, UserState.empty(DIM, CFG.dedup_window))
        state.add(f"e{k}", ts, "click", unit(k), CFG, item)
        recent.add(user, ts, item)
    for user, state in states.items():
        assert recent.items(user) == state.recent_items[-CFG.history_len :]


def test_because_names_the_recent_items_whose_successors_carry_a_recommendation():
    r = NextItemRanker(InterestConfig(transition_backward=0.0), DIM)
    for history in (["a", "x"], ["b", "x"], ["b", "x"]):  # x follows a once and b twice
        r.learn(history[:1], history[0], unit(1))
        r.learn(history[:1], history[1], unit(2))
    r.add_item("z", unit(3))
    assert r.because(["a", "b"], "x") == ["b", "a"]  # b: newer and the larger count
    assert r.because(["a", "b"], "z") == []  # only text and popularity put z there
    top = dict(r.recommend(["a", "b"], None, 2, exclude=["a", "b"]))
    assert list(top) == ["x", "z"]


def _learned(cfg: InterestConfig, seed: int = 3, n_items: int = 300, n: int = 4000) -> NextItemRanker:
    rng = np.random.default_rng(seed)
    r = NextItemRanker(cfg, DIM)
    r.add_items((f"i{k}", unit(k)) for k in range(n_items))
    recent = RecentItems(cfg.history_len)
    for t in range(n):
        user, item = f"u{rng.integers(40)}", f"i{min(int(rng.zipf(1.3)), n_items) - 1}"
        r.learn(recent.items(user), item, unit(int(item[1:])))
        recent.add(user, float(t), item)
    return r


def test_a_bounded_ranker_scores_its_candidates_exactly_and_finds_the_same_top_items():
    unbounded = _learned(UNBOUNDED)
    everything = _learned(InterestConfig(text_candidates=300, popular_candidates=300, successors_kept=0))
    bounded = _learned(InterestConfig(text_candidates=40, popular_candidates=20, successors_kept=0))
    same = 0
    for seed in range(30):
        history = [f"i{k}" for k in np.random.default_rng(seed).integers(0, 60, 6)]
        interest = unit(1000 + seed)
        full = unbounded.recommend(history, interest, 10, history)
        assert everything.recommend(history, interest, 10, history) == full  # all candidates: identical
        items, scores = bounded.candidates(history, interest)
        reference = np.full(unbounded.n_items, -np.inf)
        reference[unbounded.candidates(history, interest)[0]] = unbounded.candidates(history, interest)[1]
        np.testing.assert_allclose(scores, reference[items], rtol=1e-6)  # candidates score exactly
        same += len({i for i, _ in bounded.recommend(history, interest, 10, history)} & {i for i, _ in full})
    assert same / 300 >= 0.9


def test_pruned_successors_keep_memory_bounded_and_kept_counts_exact():
    full, pruned = _learned(UNBOUNDED), _learned(InterestConfig(successors_kept=8))
    assert max(len(row) for row in pruned.successors) < 16
    assert max(len(row) for row in full.successors) >= 16  # the bound did something
    for i, row in enumerate(pruned.successors):
        for j, w in row.items():
            assert w <= full.successors[i][j] + 1e-12  # a pruned pair may come back, counted from then on
    np.testing.assert_array_equal(pruned._out, full._out)  # the degree term still sees every count


def test_the_text_index_finds_the_exact_neighbours():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(3000, 32)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    index = TextIndex(32)
    index.sync(emb, 1000)
    index.sync(emb, 3000)  # grows past its first capacity
    hits = 0
    for q in emb[rng.integers(0, 3000, 100)] + 0.1 * rng.normal(size=(100, 32)).astype(np.float32):
        exact = np.argsort(-(emb @ q))[:10]
        hits += len(set(index.search(q, 10).tolist()) & set(exact.tolist()))
    assert hits / 1000 >= 0.95


def test_a_batched_search_finds_the_same_items_with_more_threads(monkeypatch):
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(2000, 32)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    index = TextIndex(32)
    index.sync(emb, 2000)
    queries = emb[rng.integers(0, 2000, 64)] + 0.3 * rng.normal(size=(64, 32)).astype(np.float32)
    alone = index.search_many(queries, 20)
    calls = []
    monkeypatch.setattr(index, "_index", _Spy(index._index, calls))
    monkeypatch.setattr(TextIndex, "search_threads", 4)
    threaded = index.search_many(queries, 20)
    assert calls == [4]  # 64 queries: 4 threads of 16
    assert all(np.array_equal(a, b) for a, b in zip(alone, threaded, strict=True))
    index.search_many(queries[:9], 20)
    assert calls[-1] == 1  # too few queries to be worth a second thread


class _Spy:
    """The hnswlib index, noting the thread count of each search."""

    def __init__(self, index, calls: list) -> None:  # noqa: ANN001
        self._index, self._calls = index, calls

    def knn_query(self, queries, k: int, num_threads: int):  # noqa: ANN201, ANN001
        self._calls.append(num_threads)
        return self._index.knn_query(queries, k=k, num_threads=num_threads)

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._index, name)


def test_similar_items_come_from_the_index_and_match_exact_search():
    bounded, exact = _learned(CFG), _learned(UNBOUNDED)
    query = unit(7)
    got, want = bounded.similar(query, 5, leave_out=["i7"]), exact.similar(query, 5, leave_out=["i7"])
    assert [i for i, _ in got] == [i for i, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-6)
    assert "i7" not in {i for i, _ in got} and [s for _, s in got] == sorted(
        (s for _, s in got), reverse=True
    )


def test_a_newer_snapshot_extends_the_index_of_the_one_in_force_which_keeps_ranking_its_own_items():
    old = _learned(CFG, n_items=200)
    old.prepare_index()
    new = NextItemRanker.from_bytes(_learned(CFG, n_items=300).to_bytes(), CFG)
    new.adopt_index(old)
    new.prepare_index()
    assert new.text_index is old.text_index and old.text_index.size == 300  # extended, not rebuilt
    query = unit(250)  # nearest to an item only the new snapshot has
    assert all(old.index[i] < 200 for i, _ in old.similar(query, 10))  # the old one never sees it
    assert "i250" in {i for i, _ in new.similar(query, 10)}
    other = NextItemRanker.from_bytes(_learned(CFG, seed=9, n_items=300).to_bytes(), CFG)
    other.ids[0] = "something-else"  # not an extension of the old item list: its own index
    other.adopt_index(old)
    assert other.text_index is None


def _with_new_items(cfg: InterestConfig) -> NextItemRanker:
    """``_learned``'s ranker plus 20 new items (text only, no event), new{k} with i{k}'s text turned a bit."""
    r = _learned(cfg)
    for k in range(20):
        v = unit(k) + 0.3 * unit(5000 + k)
        r.add_item(f"new{k}", v / np.linalg.norm(v))
    return r


def test_new_items_take_the_last_fresh_place_by_their_text_and_the_rest_keeps_its_order():
    fresh = _with_new_items(InterestConfig(fresh_slots=2, fresh_within=10))
    plain = _with_new_items(InterestConfig(fresh_slots=0))
    history = ["i3", "i7", "i1"]  # newest last: i1's text weighs most in the fresh items' query
    served = [i for i, _ in fresh.recommend(history, None, 12, exclude=history)]
    before = [i for i, _ in plain.recommend(history, None, 12, exclude=history)]
    assert not any(i.startswith("new") for i in before)  # counts alone never rank a new item this high
    assert served[:8] == before[:8]
    # The two items nobody acted on nearest the recent items' text, weighted 0.7 ** age (i1 newest).
    query = sum(0.7**age * fresh._emb[fresh.index[i]] for age, i in enumerate(["i1", "i7", "i3"]))
    untouched = np.flatnonzero(fresh.popularity_scores() == 0)
    nearest = untouched[np.argsort(-(fresh._emb[untouched] @ query))[:2]]
    assert served[8:10] == [fresh.ids[j] for j in nearest]
    assert served[8] == "new1"  # i1's text, turned a bit
    assert served[10:] == before[8:10]  # a longer list goes on where it left off
    assert [i for i, _ in fresh.recommend(history, None, 8, exclude=history)] == before[:8]  # too short
    scores = fresh.scores(history, None, exclude=history)
    assert list(np.argsort(-scores, kind="stable")[:12]) == [fresh.index[i] for i in served]
    assert fresh.is_new("new1") is True and fresh.is_new("i1") is False  # plain bools (the API's JSON)
    fresh.learn(history, "new1", unit(1))  # its first event: counted now, no longer new
    assert fresh.is_new("new1") is False
    assert "new1" not in [i for i, _ in fresh.recommend(history, None, 10, exclude=history)][8:]


def test_a_bounded_ranker_keeps_no_fresh_place_for_a_new_item_far_from_the_query():
    def walked(cfg: InterestConfig) -> NextItemRanker:  # every item acted on: none is new
        r = NextItemRanker(cfg, DIM)
        history: list[str] = []
        for step in range(60):
            item = f"a{step % 20}"
            r.learn(history, item, unit(step % 20))
            history = (history + [item])[-cfg.history_len :]
        return r

    r = walked(InterestConfig(text_candidates=5))
    off = walked(InterestConfig(text_candidates=5, fresh_slots=0))
    r.add_item("far", -unit(1))  # opposite to the query: never among the 5 nearest items
    history = ["a0", "a1"]
    assert r.recommend(history, unit(1), 10, history) == off.recommend(history, unit(1), 10, history)
    r.add_item("near", unit(1))
    assert r.recommend(history, unit(1), 10, history)[-1][0] == "near"


def test_fresh_places_must_leave_room_in_the_list():
    with pytest.raises(ValueError, match="fresh_slots"):
        InterestConfig(fresh_slots=10, fresh_within=10)
    with pytest.raises(ValueError, match="fresh_slots"):
        InterestConfig(fresh_slots=-1)


def _mixed_reference(r: NextItemRanker, history, interest, sequence, share) -> np.ndarray:
    """The mix written out over the whole catalogue: z-scores of the model's scores and of the ranker's
    candidates (the rest tied with its lowest), weighted, then the served list's places."""
    items, own = r.candidates(history, interest)
    z_own = (own - own.mean()) / (own.std() + 1e-12)
    z_seq = (sequence - sequence.mean()) / (sequence.std() + 1e-12)
    ranker_term = np.full(r.n_items, z_own.min())
    ranker_term[items] = z_own
    mixed = share * z_seq + (1 - share) * ranker_term
    items, s = r.place_fresh(np.arange(r.n_items), mixed, history, exclude=history)
    out = np.full(r.n_items, -np.inf)
    out[items] = s
    return out


@pytest.mark.parametrize("cfg", [CFG, UNBOUNDED], ids=["bounded", "unbounded"])
def test_a_mixed_list_is_the_mix_over_every_item_and_its_top_k_needs_only_the_best_of_the_rest(cfg):
    from dataclasses import replace

    r = _learned(replace(cfg, sequence_mix=0.5, fresh_slots=1))
    rng = np.random.default_rng(7)
    for seed in range(25):
        history = [f"i{k}" for k in np.random.default_rng(seed).integers(0, 60, 6)]
        interest = unit(2000 + seed)
        sequence = rng.normal(size=r.n_items)
        expected = _mixed_reference(r, history, interest, sequence, 0.5)
        np.testing.assert_allclose(r.scores(history, interest, history, sequence), expected, rtol=1e-12)
        top = r.recommend(history, interest, 10, history, sequence)  # scored over a bounded set
        best = np.lexsort((np.arange(r.n_items), -expected))[:10]
        assert [i for i, _ in top] == [r.ids[j] for j in best]
        np.testing.assert_allclose([s for _, s in top], expected[best], rtol=1e-12)
        assert top != r.recommend(history, interest, 10, history)  # the model's share moved the list


def test_a_mix_share_of_zero_or_no_model_scores_serve_the_ranker_alone():
    from dataclasses import replace

    r = _learned(CFG)
    off = NextItemRanker.from_bytes(r.to_bytes(), replace(CFG, sequence_mix=0.0))
    history, interest = ["i1", "i2", "i3"], unit(5)
    sequence = np.random.default_rng(0).normal(size=r.n_items)
    alone = r.recommend(history, interest, 10, history)
    assert off.recommend(history, interest, 10, history, sequence) == alone
    with pytest.raises(ValueError, match="sequence scores for 3 items"):
        r.recommend(history, interest, 10, history, sequence[:3])


@pytest.mark.parametrize("cfg", [CFG, UNBOUNDED, InterestConfig(text_candidates=10)],
                         ids=["bounded", "unbounded", "few-candidates"])  # fmt: skip
def test_a_batch_of_lists_is_each_users_own_list(cfg):
    """The worker asks for a micro-batch's lists at once (one text-index search for all users): each list
    is exactly the one a single query gives (the API's), with new items, users without history or
    interest, and with and without the model's scores."""
    from dataclasses import replace

    r = _with_new_items(replace(cfg, sequence_mix=0.5, fresh_slots=2))
    rng = np.random.default_rng(11)
    histories = [[f"i{k}" for k in rng.integers(0, 60, rng.integers(0, 8))] for _ in range(40)]
    histories += [[], ["unknown-item"], ["new3"]]
    interests = [unit(3000 + n) if n % 5 else None for n in range(len(histories))]
    interests[1] = np.zeros(DIM, np.float32)  # an interest vector with nothing in it yet
    hits = r.text_hits_many(histories, interests)
    assert len(hits) == len(histories)
    served = []
    for n, (history, interest, found) in enumerate(zip(histories, interests, hits, strict=True)):
        sequence = rng.normal(size=r.n_items) if n % 3 else None
        alone = r.recommend(history, interest, 10, history, sequence)
        assert r.recommend(history, interest, 10, history, sequence, hits=found) == alone
        served += [i for i, _ in alone]
    assert any(i.startswith("new") for i in served)  # the fresh places' search is in the batch too


def test_recent_items_share_one_string_per_item_across_users():
    """A trainer keeps each user's last items; every event's item id is a string of its own (parsed from
    its record), so the same item held by many users was as many strings until they were interned."""
    recent = RecentItems(8)
    first, second = "".join(["12", "34"]), "".join(["1", "234"])  # equal, two objects
    assert first == second and first is not second
    recent.add("a", 1.0, first)
    recent.add("b", 2.0, second)
    assert recent.items("a")[0] is recent.items("b")[0]
