"""Many users' lists as one flat array and their lengths: how a trainer checkpoints windows.

A pickled tuple per step made a checkpoint of 100,000 users' windows take seconds on the trainer's event
loop; one array per column plus the lengths takes a fraction of one (``docs/performance.md``). Both the
sequential model's windows and the ranker's recent items are stored this way, so the splitting lives here,
free of torch.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator

import numpy as np


def lengths_of(lists: Collection[Collection]) -> np.ndarray:
    """Each list's length, in order (int32): what ``spans`` splits the flat array by again."""
    return np.fromiter(map(len, lists), np.int32, len(lists))


def spans(lengths: Iterable[int]) -> Iterator[tuple[int, int]]:
    """(start, end) of each list in the flat array, for lists of ``lengths`` laid end to end."""
    end = 0
    for length in np.asarray(lengths, np.int64).tolist():
        start, end = end, end + length
        yield start, end
