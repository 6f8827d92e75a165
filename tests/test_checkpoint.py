"""The offset ledger: what may be committed, and how gaps and failed batches are read again."""

from __future__ import annotations

from streams.checkpoint import TP, OffsetLedger, Verdict

A = TP("click", 0)
B = TP("cart", 0)


def test_only_finished_batches_are_committable_and_commits_never_go_back():
    ledger = OffsetLedger()
    gen = ledger.generation
    assert [ledger.admit(A, o) for o in (10, 11, 12)] == [Verdict.PROCESS] * 3
    assert ledger.committable() == {A: 10}  # nothing done yet: the position it started from
    ledger.done({A: 12}, gen)
    assert ledger.committable() == {A: 13}
    ledger.committed({A: 13})
    assert ledger.committable() == {}
    assert ledger.admit(A, 12) is Verdict.SEEN  # re-fetched after a seek to the committed offset


def test_a_rebalance_starts_afresh_and_drops_records_fetched_before_it():
    ledger = OffsetLedger()
    ledger.begin(1, 1)
    token = ledger.generation
    ledger.admit(A, 5, 1)
    ledger.begin(2, 2)  # rebalanced while the batch with offset 5 was still running
    ledger.done({A: 5}, token)
    assert ledger.committable() == {}
    assert ledger.admit(A, 6, 1) is Verdict.STALE  # prefetched in generation 1
    assert ledger.admit(A, 3, 2) is Verdict.PROCESS  # faust sought back to the committed offset
    assert ledger.is_current(2, 2) and not ledger.is_current(2, 1)


def test_a_group_recreated_by_a_wiped_broker_starts_afresh_at_the_same_generation_number():
    ledger = OffsetLedger()
    ledger.begin(1, 1)
    ledger.admit(A, 700, 1)
    ledger.begin(1, 2)  # the broker lost the group: generation 1 again, after another rebalance
    assert ledger.admit(A, 0, 1) is Verdict.PROCESS


def test_a_gap_seeks_back_and_holds_later_records_until_the_refetch():
    ledger = OffsetLedger()
    gen = ledger.generation
    ledger.admit(A, 0)
    ledger.admit(A, 1)
    ledger.done({A: 1}, gen)
    assert ledger.admit(A, 5) is Verdict.SEEK  # 2..4 were skipped on the way
    assert ledger.read_offset(A) == 2
    assert ledger.admit(A, 6) is Verdict.AHEAD  # fetched before the seek: the re-fetch brings it again
    assert ledger.admit(B, 0) is Verdict.PROCESS  # other partitions go on
    assert [ledger.admit(A, o) for o in (2, 3, 4, 5, 6)] == [Verdict.PROCESS] * 5
    ledger.done({A: 6}, gen)
    assert ledger.committable()[A] == 7


def test_a_gap_is_accepted_only_over_offsets_the_broker_says_hold_no_record():
    ledger = OffsetLedger()
    ledger.admit(A, 0)
    assert ledger.admit(A, 3) is Verdict.SEEK  # 1..2: skipped on the way, or transaction markers?
    assert ledger.admit(A, 3) is Verdict.AHEAD  # a record from before the seek is no proof either way
    ledger.note_absent(A, 1, 3)  # the broker: records resume at 3 (OffsetProbe)
    assert ledger.admit(A, 3) is Verdict.PROCESS
    assert ledger.admit(A, 4) is Verdict.PROCESS
    # the knowledge outlives a rebalance: re-read from the committed offset 0, the jump passes at once
    ledger.begin(1, 1)
    assert [ledger.admit(A, o, 1, 0) for o in (0, 3, 4)] == [Verdict.PROCESS] * 3
    # ... but only over the offsets it covers
    assert ledger.admit(A, 7, 1, 0) is Verdict.SEEK


def test_a_stale_record_just_past_a_gap_does_not_pass_for_its_re_fetch():
    """The rule this replaces accepted any record up to the one that revealed the gap as the start of
    the re-fetch; a record fetched before the seek (faust's own second pass after a rebalance, its head
    cleared from the stream's buffer) fits that too, and the missing record was then skipped for good."""
    ledger = OffsetLedger()
    ledger.begin(4, 0)
    tp = TP("click", 2)
    assert ledger.admit(tp, 828, 4, 827) is Verdict.SEEK
    assert ledger.admit(tp, 828, 4, 827) is Verdict.AHEAD  # 827 exists: the re-fetch brings it
    assert [ledger.admit(tp, o, 4, 827) for o in (827, 828)] == [Verdict.PROCESS] * 2


def test_a_failed_batch_is_read_again_from_what_is_done():
    ledger = OffsetLedger()
    gen = ledger.generation
    for o in range(4):
        ledger.admit(A, o)
    ledger.done({A: 3}, gen)
    for o in range(4, 8):
        ledger.admit(A, o)
    assert ledger.failed({A: 4}, gen) == {A: 4}
    assert ledger.admit(A, 8) is Verdict.AHEAD  # fetched before the seek
    assert ledger.admit(A, 4) is Verdict.PROCESS
    assert ledger.committable() == {A: 4}


def test_lag_counts_what_is_not_done():
    ledger = OffsetLedger()
    ledger.admit(A, 0)
    ledger.done({A: 9}, ledger.generation)
    ledger.admit(B, 0)
    assert ledger.lag({A: 25, B: 4}) == 15 + 4
    assert ledger.lag({A: None}) == 0


def test_the_first_record_of_an_assignment_must_sit_at_the_committed_offset():
    ledger = OffsetLedger()
    assert ledger.admit(A, 40, committed=37) is Verdict.SEEK  # 37..39 skipped right after the seek
    assert ledger.read_offset(A) == 37
    assert ledger.admit(A, 37) is Verdict.PROCESS
    assert ledger.admit(B, 5, committed=5) is Verdict.PROCESS
    assert ledger.admit(TP("order", 1), 2, committed=None) is Verdict.PROCESS  # nothing committed yet


def test_faust_no_longer_filters_input_records_by_its_read_offset():
    """faust drops a fetched record below the highest offset it has passed on. After a seek back, a record
    fetched before the seek and drained after it raised that mark again, so faust dropped the start of the
    re-fetch, and the ledger took the first record it saw as proof that the records before it did not exist
    (108 of 6,000 events lost in a kill -9 run). Only the ledger filters input records now."""
    from collections import defaultdict
    from types import SimpleNamespace

    from streams.checkpoint import install

    consumer = SimpleNamespace(_read_offset=defaultdict(lambda: None), _commit_tps=None)
    consumer._read_offset[TP("items", 0)] = 7
    app = SimpleNamespace(consumer=consumer)
    install(app, OffsetLedger(), ["click"])
    read_offset = consumer._read_offset
    read_offset[TP("click", 0)] = 152  # what faust's fetch loop does after passing a record on
    assert read_offset[TP("click", 0)] is None  # ... and what it reads back before the next one
    assert read_offset[TP("items", 0)] == 7 and read_offset[TP("items", 1)] is None  # others as before
    assert callable(consumer._commit_tps)


def test_owned_partitions_with_records_not_done_are_waiting_whether_or_not_they_delivered():
    ledger = OffsetLedger()
    ledger.begin(1, 0)
    a, b, c, d = TP("click", 0), TP("click", 1), TP("click", 2), TP("click", 3)
    for offset in range(3):
        assert ledger.admit(a, offset, 1, 0) is Verdict.PROCESS
    assert ledger.admit(d, 0, 1, 0) is Verdict.PROCESS
    ledger.done({a: 2, d: 0}, ledger.generation)
    start, ends = {a: 0, b: 5, c: 7, d: 0}, {a: 10, b: 9, c: 7, d: 1}
    # a delivered and did 3 of its 10; b never delivered its 4; c has none; d did all it has
    assert ledger.waiting([a, b, c, d], 1, 0, start, ends) == {a: (3, 7), b: (5, 4)}
    # after a rebalance nothing is done in the new assignment: counted from where reading starts
    assert ledger.waiting([a, b, c, d], 2, 0, start, ends) == {a: (0, 10), b: (5, 4), d: (0, 1)}
    assert ledger.waiting([a, b], 1, 0, start, {a: 10}) == {a: (3, 7)}  # no high-water mark: not judged
    # a's last offset is a transaction's marker: a fetch from 3 brought 3..8 and moved past 9
    ledger.note_records_from(a, 3, [3, 4, 5, 6, 7, 8], position=10)
    assert ledger.waiting([a], 1, 0, start, ends) == {a: (3, 6)}
    ledger.done({a: 8}, ledger.generation)
    assert ledger.waiting([a], 1, 0, start, ends) == {} and ledger.lag({a: 10}) == 0


def test_a_partition_read_again_after_a_re_fetch_that_never_came_resumes_from_the_committed_offset():
    ledger = OffsetLedger()
    ledger.begin(1, 0)
    tp = TP("click", 2)
    assert ledger.admit(tp, 828, 1, 827) is Verdict.SEEK  # 827 never reached the worker
    assert ledger.admit(tp, 829, 1, 827) is Verdict.AHEAD  # ... and its re-fetch never comes:
    assert ledger.admit(tp, 900, 1, 827) is Verdict.AHEAD  # everything after it is dropped
    assert "awaiting the re-fetch of 827" in ledger.describe(tp)
    ledger.reread(tp)  # the stuck partition is sought back to where reading starts (827)
    assert ledger.admit(tp, 827, 1, 827) is Verdict.PROCESS
    assert ledger.admit(tp, 828, 1, 827) is Verdict.PROCESS
    ledger.done({tp: 828}, ledger.generation)
    assert ledger.committable() == {tp: 829}
    # read again from further back than that (the committed offset was older): already done, processed
    # again (the user states recognise what they hold), and what is done does not go back
    ledger.reread(tp)
    assert ledger.admit(tp, 800, 1, 800) is Verdict.PROCESS
    assert ledger.committable() == {tp: 829}


def test_a_batch_holding_a_gap_and_its_re_fetch_drops_both_and_the_seek_brings_them_again():
    """Seen in a multi-worker run: after a rebalance the first record of a partition in a batch was past
    the committed offset (827 skipped), and the same batch already held faust's re-fetch from 827. The
    re-fetch was admitted while the batch dropped it, so the seek's re-fetch found 827.. "seen": the
    partition stalled, and a record after them would have committed them unprocessed."""
    ledger = OffsetLedger()
    ledger.begin(4, 0)
    tp, other = TP("click", 2), TP("click", 0)
    first = [(tp, 828, 4, 827), (other, 5, 4, 5), (tp, 827, 4, 827), (tp, 828, 4, 827), (tp, 829, 4, 827)]
    process, gaps = ledger.admit_batch(first)
    assert process == [1] and gaps == {tp: 0} and ledger.read_offset(tp) == 827  # seek back to 827
    # the seek's re-fetch: every record is processed, from the committed offset on
    process, gaps = ledger.admit_batch([(tp, 827, 4, 827), (tp, 828, 4, 827), (tp, 829, 4, 827)])
    assert process == [0, 1, 2] and gaps == {}
    ledger.done({tp: 829, other: 5}, ledger.generation)
    assert ledger.committable() == {tp: 830, other: 6}


def test_nothing_is_committed_past_records_a_batch_dropped_for_a_gap():
    ledger = OffsetLedger()
    ledger.begin(1, 0)
    tp = TP("click", 2)
    process, gaps = ledger.admit_batch([(tp, 828, 1, 827), (tp, 827, 1, 827), (tp, 828, 1, 827)])
    assert process == [] and gaps == {tp: 0} and ledger.read_offset(tp) == 827
    # a record fetched before the seek arrives after it, then the re-fetch
    process, _ = ledger.admit_batch([(tp, 829, 1, 827)])
    assert process == []
    ledger.done({}, ledger.generation)
    assert ledger.committable().get(tp, 827) == 827


def test_a_batch_goes_on_over_markers_once_the_broker_says_they_hold_no_record():
    """What ``streams.agents.admit`` does with a gap: ask where records resume (here: at the revealing
    record, 3), note the marker, and admit the partition's records again from that record."""
    ledger = OffsetLedger()
    entries = [(tp, offset, None, None) for tp, offset in ((A, 0), (A, 1), (A, 3), (B, 0), (A, 4))]
    process, gaps = ledger.admit_batch(entries)
    assert process == [0, 1, 3] and gaps == {A: 2} and ledger.read_offset(A) == 2
    ledger.note_absent(A, 2, 3)
    rest = [j for j in range(len(entries)) if entries[j][0] == A and j >= gaps[A]]
    more, again = ledger.admit_batch([entries[j] for j in rest])
    assert [rest[k] for k in more] == [2, 4] and again == {}


def test_one_fetch_tells_every_offset_without_a_record_up_to_its_last_record():
    ledger = OffsetLedger()
    assert ledger.note_records_from(A, 10, [12, 13, 15, 16]) == 3  # 10, 11 and 14
    assert ledger.note_records_from(A, 10, [12, 13, 15, 16]) == 0  # known already
    ledger.admit(A, 9)
    assert [ledger.admit(A, o) for o in (12, 13, 15, 16)] == [Verdict.PROCESS] * 4
    assert ledger.admit(A, 18) is Verdict.SEEK  # past the fetch: unknown
    assert ledger.note_records_from(B, 0, []) == 0
    for o in range(4):
        ledger.admit(B, o)
    ledger.done({B: 3}, ledger.generation)
    assert ledger.lag({B: 6}) == 2  # 4 and 5: records not done yet, as far as anyone knows
    assert ledger.note_records_from(B, 4, [], position=6) == 2  # a reader moved past them: markers
    assert ledger.lag({B: 6}) == 0
