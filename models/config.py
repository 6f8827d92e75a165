"""Every hyperparameter of the interest model, in one object.

Drivers (the Faust worker, the file replay) build one ``InterestConfig`` and hand it to the core; change a
number here (or through ``INTEREST_*`` environment variables, see ``streams.settings``) and both drivers
follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

EVENT_TYPES: tuple[str, ...] = ("click", "cart", "order")
DAY_S = 86_400.0


@dataclass(frozen=True)
class InterestConfig:
    # Interest state: s(t) = sum_i w_type(i) * exp(-(t - t_i) / tau) * e_i
    tau_s: float = 7 * DAY_S
    """Decay time constant in seconds; an event loses 1/e of its weight every tau."""
    weights: dict[str, float] = field(default_factory=lambda: {"click": 1.0, "cart": 3.0, "order": 5.0})
    """Event-type weights: a purchase says more about interest than a click."""
    dedup_window: int = 256
    """How many recent event ids (by arrival) a user remembers, so that a *producer-side* duplicate (the
    same event sent twice, at two offsets) is applied once. Kafka's own redelivery after a crash does not
    depend on it: each state records the input offsets it has applied (``models/interest.py``)."""

    # Fusion
    context_hash_dim: int = 32
    """Buckets for hashed environment keys (device, geo, ...); fixes the feature dimension."""
    environment_features: bool = True
    """False zeroes the environment block (time of day, weekday, context): an ablation switch."""

    category_hash_dim: int = 32
    """Buckets of the user's recent-category profile in the head's features (hashed so the feature
    dimension stays fixed however many categories a catalogue has). 0 turns the profile off."""
    category_tau_s: float = 120.0
    """Decay time constant of the recent-category profile: what the user is browsing *now* predicts the
    next category best. Chosen with ``category_blend``, ``category_blend_mass`` and ``learning_rate`` on
    the first half of the MovieLens sample's prequential replay, the head scored with weights up to 2,560
    events old (as a worker serves it while many users interleave; ``evaluation.protocols.LaggedHead``):
    acc@1 there 60 s 0.5632, 120 s 0.5666, 300 s 0.5545, 600 s 0.5399, 1 h 0.5120
    (``benchmarks/category_head.py``: each setting changed alone from the defaults, 2026-12-01)."""
    category_blend: float = 1.0
    """The recent-category profile's largest share in the served next-category distribution; the head's
    softmax has the rest (``head.blend_profiles``). Validation as above: 0 (the head alone) 0.4783, 0.5
    0.5390, 0.75 0.5570, 0.9 0.5639, 1 0.5666."""
    category_blend_mass: float = 2.0
    """The profile's share is ``category_blend * m / (m + category_blend_mass)``, m its mass when the
    prediction is made (``UserState.category_mass``: each event counts exp(-age / ``category_tau_s``), so
    about the number of the user's events in the last two minutes): one event just now gives the profile
    a third, three in a row three fifths, and a session gone quiet leaves the head to speak. 0: a fixed
    share. Validation as above: 1 0.5660, 2 0.5666, 4 0.5612; 0 (with ``category_blend`` 1: the profile
    alone) 0.5536; the fixed share of 0.75 used before 2026-12-01, 0.5613 (0.5622 with its learning rate
    of 0.001)."""

    # Softmax head (online multinomial logistic regression)
    learning_rate: float = 0.002
    """Validation as above: 0.001 0.5658, 0.002 0.5666, 0.003 0.5649, 0.005 0.5612, 0.01 0.5520. The
    earlier default (0.01, a 365-day profile, no blend) scored 0.565 with fresh weights but 0.382 with
    lagged ones: it predicted well only while its last steps were the same user's previous events, which
    is the MovieLens replay's order (95% of consecutive events are one user's) and not a busy stream's."""
    l2: float = 1e-5
    top_k: int = 5
    max_classes: int = 256
    """The head learns at most this many categories (first come); later ones are ignored by it. At 457
    features a replica is 1.8 KB per class, so 256 keeps it at ~0.47 MB, under Kafka's 1 MB record."""

    # Next-item ranker (models/ranker.py): what the user is likely to act on next
    history_len: int = 8
    """Item ids of the user's most recent events kept in the state: the ranker's query."""
    transition_window: int = 5
    """An event teaches "item j follows item i" for each of the user's previous ``transition_window``
    items i, weighted ``transition_decay ** (distance - 1)``."""
    transition_decay: float = 0.7
    transition_backward: float = 0.3
    """Weight of the reverse direction (j -> i): order within a session is only partly meaningful."""
    history_decay: float = 0.7
    """Weight of the k-th most recent item of the query: ``history_decay ** k``."""
    degree_power: float = 0.5
    """Successor counts of item i are divided by (outgoing weight of i + 1) ** degree_power, so a very
    common item does not drown the rest of the query (0 = raw counts, 1 = conditional probabilities)."""
    sequence_len: int = 50
    """Events (item, type, time) kept per user for the sequential model (``models/sequence.py``): its
    window. Set it to the model's ``max_len`` (a shorter window gives the worker a different user vector
    than the trainer's); 0 keeps only the ranker's ``history_len``."""
    sequence_weight: float = 1.0
    """Weight of the (max-normalised) sequence score; 0 leaves text and popularity alone."""
    sequence_mix: float = 0.5
    """The sequential model's share of a served list (worker updates, the query API) while the newest
    snapshot carries that model: items rank by ``sequence_mix * z(model score) + (1 - sequence_mix) *
    z(ranker score)``, each z-scored over the catalogue (``models.ranker.mix``). 0 serves the counting
    ranker alone. Chosen on validation Recall@10 (``evaluate``'s rows ``mix w``): 0.5 is the best or tied
    best on the MovieLens sample, its dense variant and its new-items variant (mean 0.169; 0.25: 0.167,
    0.75: 0.166, the ranker alone: 0.160), and every mix is above the ranker alone on each of the three."""
    text_weight: float = 0.1
    """Weight of cos(user interest vector, item text) next to the (max-normalised) sequence score."""
    popularity_weight: float = 0.05
    """Weight of log-popularity (normalised to [0, 1]): the prior for users and items with no sequence."""
    text_candidates: int = 100
    """0: a query scores every item (its cost grows with the catalogue). N > 0: a query scores only
    candidates: the recent items' successors, the N items nearest to the interest vector (HNSW index)
    and the ``popular_candidates`` most popular items, so its cost does not grow with the catalogue.
    On the MovieLens sample the candidates hold every top 10 of the full ranking (same Recall@10 on
    validation and test, ``benchmarks/bounded_ranker.py``)."""
    popular_candidates: int = 100
    successors_kept: int = 200
    """0: every successor count is kept. N > 0: an item's successors are pruned to its N largest counts
    whenever it has 2N, so the ranker's memory is at most 2N pairs per item. 200: the smallest of 50, 100,
    200 whose validation Recall@10 is within 2% of keeping everything, at it and every larger setting
    (validation: 50 1.011x, 100 0.956x, 200 0.989x; the MovieLens sample's largest row has 1,008)."""
    fresh_slots: int = 1
    """Places at the end of the first ``fresh_within`` recommendations kept for *new* items (no learned
    event yet), the ones whose text is nearest the user's recent items. Counts rank only what has been
    acted on, so without them a new item is never recommended, never acted on, and stays unknown.
    1: the largest setting whose validation Recall@10 stays within 2% of 0 on the MovieLens sample,
    plain and with 10% of the catalogue new (``evaluate --new-items 0.1``); 0 turns them off."""
    fresh_within: int = 10
    """The list length the fresh places belong to (the updates' ``INTEREST_RECOMMENDATIONS_K``): with
    ``fresh_slots`` 1 a new item is 10th; a shorter list has none, a longer one continues after it."""

    def weight(self, event_type: str) -> float:
        return self.weights[event_type]

    @property
    def items_kept(self) -> int:
        """Recent items a user state keeps: the ranker's query and the sequential model's window."""
        return max(self.history_len, self.sequence_len)

    def __post_init__(self) -> None:
        missing = [t for t in EVENT_TYPES if t not in self.weights]
        if missing:
            raise ValueError(f"weights lack event types {missing}")
        if self.tau_s <= 0:
            raise ValueError("tau_s must be positive")
        if self.category_hash_dim < 0 or self.category_tau_s <= 0:
            raise ValueError("category_hash_dim must be >= 0 and category_tau_s positive")
        if not 0.0 <= self.category_blend <= 1.0 or self.category_blend_mass < 0:
            raise ValueError("category_blend must be within [0, 1], category_blend_mass >= 0")
        if self.dedup_window < 1 or self.context_hash_dim < 1 or self.max_classes < 1:
            raise ValueError("dedup_window, context_hash_dim and max_classes must be >= 1")
        if self.sequence_len < 0 or self.sequence_len > 10_000:
            raise ValueError("sequence_len must be within 0..10000")
        if self.history_len < 1 or self.transition_window < 1:
            raise ValueError("history_len and transition_window must be >= 1")
        if min(self.text_candidates, self.successors_kept) < 0 or self.popular_candidates < 1:
            raise ValueError("text_candidates and successors_kept must be >= 0, popular_candidates >= 1")
        if not 0 <= self.fresh_slots < self.fresh_within:
            raise ValueError("fresh_slots must be >= 0 and smaller than fresh_within")
        if self.transition_window > self.history_len:
            raise ValueError("transition_window cannot exceed history_len (the state keeps only that many)")
