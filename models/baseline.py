"""A yardstick for the softmax head: predict the categories seen most often so far (all users).

Scored with the same test-then-train protocol, so its numbers sit next to the head's in a replay.
"""

from __future__ import annotations

from collections import Counter

from models.head import PrequentialStats


class PopularityBaseline:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.stats = PrequentialStats()

    def test_then_train(self, categories: tuple[str, ...]) -> None:
        if not categories:
            return
        ranked = [c for c, _ in self.counts.most_common(5)]
        self.stats.n += 1
        self.stats.hit1 += int(bool(ranked) and ranked[0] in categories)
        self.stats.hit5 += int(bool(set(ranked) & set(categories)))
        for c in categories:
            self.counts[c] += 1.0 / len(categories)
