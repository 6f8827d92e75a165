from models.ragged import lengths_of, spans


def test_lists_laid_end_to_end_split_back_into_the_same_lists_empty_ones_included():
    lists = [[1, 2, 3], [], [4], [], [5, 6]]
    flat = [x for xs in lists for x in xs]
    lengths = lengths_of(lists)
    assert lengths.tolist() == [3, 0, 1, 0, 2]
    assert [flat[a:b] for a, b in spans(lengths)] == lists
    assert list(spans(lengths_of([]))) == []
