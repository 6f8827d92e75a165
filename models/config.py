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
    """How many recent event ids (by arrival) a user remembers, so a redelivered event is applied once.
    Kafka redelivers the most recent uncommitted records, so this must cover at least one micro-batch
    (the settings check ``dedup_window >= max_batch``); an id older than the window is applied again."""

    # Fusion
    context_hash_dim: int = 32
    """Buckets for hashed environment keys (device, geo, ...); fixes the feature dimension."""

    # Softmax head (online multinomial logistic regression)
    learning_rate: float = 0.05
    l2: float = 1e-5
    top_k: int = 5

    def weight(self, event_type: str) -> float:
        return self.weights[event_type]

    def __post_init__(self) -> None:
        missing = [t for t in EVENT_TYPES if t not in self.weights]
        if missing:
            raise ValueError(f"weights lack event types {missing}")
        if self.tau_s <= 0:
            raise ValueError("tau_s must be positive")
        if self.dedup_window < 1 or self.context_hash_dim < 1:
            raise ValueError("dedup_window and context_hash_dim must be >= 1")
