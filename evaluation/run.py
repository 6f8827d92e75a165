"""``interest-stream evaluate``: both protocols, every model, intervals, ablations, report files.

One call of ``evaluate`` replays the log through the core once per model configuration, scores the
baselines in the same passes, bootstraps intervals over users and writes (in ``out``):

- ``metrics.json``: the stable summary, ``{"loo": {MODEL: {...}}, "prequential": {MODEL: {...}}}``;
- ``eval-<dataset>.json``: every number (intervals, cold/warm, ablations, SASRec training, settings);
- ``eval-<dataset>.md`` and ``eval-<dataset>-*.png``: the report (see ``evaluation.report``).

Everything is seeded, so the same command on the same data writes the same numbers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.data import EventLog
from evaluation.metrics import (
    RANK_METRICS,
    CategoryPredictions,
    bootstrap_classification,
    bootstrap_means,
    paired_accuracy_difference,
    reliability,
    top1_hits,
)
from evaluation.protocols import (
    LooResult,
    LooSplit,
    PrequentialResult,
    loo_split,
    run_loo,
    run_prequential,
    tied_test_events,
)
from evaluation.scorers import (
    CoreModel,
    Histories,
    ItemKNN,
    LastItemText,
    Mix,
    OnlineSequence,
    Popularity,
    SASRecScorer,
    Scorer,
    StaticMean,
    with_config,
)
from models.config import DAY_S
from models.core import InterestCore
from models.sequence import SequenceConfig

HOUR_S = 3600.0
RARE_BELOW = 5  # "rare" test items: fewer training events than this (never-seen ones included)
NO_DECAY_S = 1e15  # ~30 million years: exp(-dt/tau) = 1 for any real log


@dataclass(frozen=True)
class EvalOptions:
    protocol: str = "both"  # loo | prequential | both
    batch_size: int = 256
    n_boot: int = 1000  # ranking metrics (cheap)
    n_boot_classification: int = 100  # classification metrics (AUC per resample is the costly part)
    ablations: bool = True
    sasrec: bool = True
    sasrec_budget_s: float = 1800.0
    sasrec_epochs: int = 200
    seed: int = 0
    partitions: int = 4
    """Also score the head as the worker trains it: one replica per partition (0: skip those rows)."""
    head_sync_events: int = 2560
    """... folding in the other replicas every this many events (the worker: every ``head_sync_s``)."""
    sequence: bool = True
    """Leave-one-out rows for the online sequential model (``models.sequence``) and its mixes."""
    sequence_sync_events: tuple[int, ...] = (1_000, 10_000)
    """... and the model served as workers serve it: weights refreshed every this many events."""
    new_items: float = 0.0
    """Leave-one-out with this share of the catalogue as new items, never learned before validation
    (``protocols.loo_split``); the report is then ``eval-<dataset>-new-items<percent>``."""


# The default model's ablations and grids: name -> InterestConfig changes.
LOO_VARIANTS: dict[str, dict[str, Any]] = {
    "no sequence (text + popularity)": {"sequence_weight": 0.0},
    "no text": {"text_weight": 0.0},
    "no popularity": {"popularity_weight": 0.0},
    "no backward transitions": {"transition_backward": 0.0},
    "no degree normalisation": {"degree_power": 0.0},
    "last item only (history_len 1)": {"history_len": 1, "transition_window": 1},
    "transition_window 1": {"transition_window": 1},
    "transition_window 3": {"transition_window": 3},
    "history_len 16, window 8": {"history_len": 16, "transition_window": 8},
    "text_weight 0.3": {"text_weight": 0.3},
    # The bounded ranker (candidates, pruned successor lists) against scoring the whole catalogue.
    "unbounded ranker (whole catalogue, every count)": {"text_candidates": 0, "successors_kept": 0},
    # The places kept for new items at the end of the top 10 (``fresh_slots``).
    "no fresh places": {"fresh_slots": 0},
    "2 fresh places": {"fresh_slots": 2},
}
# The online sequential model's ablations: name -> SequenceConfig changes.
SEQUENCE_VARIANTS: dict[str, dict[str, Any]] = {
    "no text projection": {"use_text": False},
    "no ID embedding": {"use_id": False},
    "no event types / time gaps": {"use_context": False},
    "no replay": {"replay": 0},
    # New items by their text: the ID term only after an item's first event, half the IDs hidden per step.
    "new items by text (ID after first event, ID dropout 0.5)": {"id_needs_event": True, "id_dropout": 0.5},
}
# Learning curves (Recall@10 of events ranked before they are learned, over the training replay).
CURVE_MODELS = ("default", "popularity", "item_knn", "sequence", "mix 0.5")
CURVE_POINTS = 25  # points of the plotted curve (each averages the probes of 1/25 of the training events)
MIX_WEIGHTS = (0.25, 0.5, 0.75)  # the sequence model's share in "mix w"; validation picks one
# The interest vector alone (the literal method) under a decay grid and without weights.
INTEREST_VARIANTS: dict[str, dict[str, Any]] = {
    "tau 1 h": {"tau_s": HOUR_S},
    "tau 1 d": {"tau_s": DAY_S},
    "tau 30 d": {"tau_s": 30 * DAY_S},
    "no decay": {"tau_s": NO_DECAY_S},
    "no event-type weights": {"weights": {"click": 1.0, "cart": 1.0, "order": 1.0}},
}
PREQUENTIAL_VARIANTS: dict[str, dict[str, Any]] = {
    "no decay": {"tau_s": NO_DECAY_S},
    "no event-type weights": {"weights": {"click": 1.0, "cart": 1.0, "order": 1.0}},
    "no environment features": {"environment_features": False},
    "tau 1 h": {"tau_s": HOUR_S},
    "tau 1 d": {"tau_s": DAY_S},
    "tau 30 d": {"tau_s": 30 * DAY_S},
    "no category profile": {"category_hash_dim": 0},
    "head alone (no profile blend)": {"category_blend": 0.0},
    "recent categories alone (no head)": {"category_blend": 1.0, "category_blend_mass": 0.0},
    "profile share fixed at 0.75 (before 2026-12-01)": {"category_blend": 0.75, "category_blend_mass": 0.0},
    "category tau 365 d": {"category_tau_s": 365 * DAY_S},
    "learning_rate 0.01": {"learning_rate": 0.01},
}
# The head as a busy worker serves it: weights up to this many events old (``protocols.LaggedHead``).
HEAD_LAG = 2_560
LAGGED = f"default, head weights lagged {HEAD_LAG:,} events"

Status = Callable[[str, int, int], None]  # (phase description, done, total) for a progress display


def _embed_catalogue(core: InterestCore, log: EventLog) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    items = [log.item_of[i] for i in log.items]
    embeddings = core.embed(items)
    return np.stack([embeddings[it.encoder_text] for it in items]), embeddings


def _loo(
    log: EventLog,
    split: LooSplit,
    core: InterestCore,
    catalogue: tuple[np.ndarray, dict[str, np.ndarray]],
    opts: EvalOptions,
    status: Status,
) -> tuple[LooResult, dict[str, Any]]:
    item_emb, embeddings = catalogue
    sasrec_log: list[str] = []
    fit_info: dict[str, Any] = {}

    def sasrec_epoch(line: str) -> None:
        sasrec_log.append(line)
        status("leave-one-out: training SASRec (epochs, early stopping)", len(sasrec_log), opts.sasrec_epochs)

    made: list[Scorer] = []

    def make(hist: Histories) -> list[Scorer]:
        def core_model(name: str, changes: dict[str, Any], use_ranker: bool = True) -> CoreModel:
            c = with_config(core, **changes) if changes else core
            return CoreModel(name, c, log.items, item_emb, embeddings, use_ranker)

        scorers: list[Scorer] = [
            core_model("default", {}),
            Popularity(hist),
            LastItemText(hist, item_emb),
            StaticMean(hist, item_emb),
            ItemKNN(hist),
            core_model("interest_vector", {}, use_ranker=False),
        ]
        if opts.sequence:
            sequence = OnlineSequence("sequence", log.items, item_emb)
            scorers.append(sequence)
            scorers += [Mix(f"mix {w}", sequence, scorers[0], w) for w in MIX_WEIGHTS]
            share = core.config.sequence_mix  # what a worker serves: this mix, with snapshot weights
            for every in opts.sequence_sync_events:
                name = f"sequence: synced every {every:,} events"
                synced = OnlineSequence(name, log.items, item_emb, None, every)
                scorers.append(synced)
                scorers.append(Mix(f"mix {share}, synced every {every:,} events", synced, scorers[0], share))
            if opts.ablations:
                for n, ch in SEQUENCE_VARIANTS.items():
                    config = replace(SequenceConfig(), **ch)
                    scorers.append(OnlineSequence(f"sequence: {n}", log.items, item_emb, config))
        if opts.sasrec:
            scorers.append(
                SASRecScorer(
                    hist, opts.sasrec_budget_s, opts.sasrec_epochs, opts.seed, sasrec_epoch, fit_info
                )
            )
        if opts.ablations:
            scorers += [core_model(f"default: {n}", ch) for n, ch in LOO_VARIANTS.items()]
            scorers += [core_model(f"interest_vector: {n}", ch, False) for n, ch in INTEREST_VARIANTS.items()]
        made.extend(scorers)
        return scorers

    total = len(split.train)
    done = 0

    def progress(n: int) -> None:
        nonlocal done
        done += n
        status("leave-one-out: replaying the training events", done, total)

    curve = [m for m in CURVE_MODELS if opts.sequence or not m.startswith(("sequence", "mix"))]
    result = run_loo(log, make, opts.batch_size, progress, split, curve_models=curve)
    fit_info["log"] = sasrec_log
    for s in made:
        if s.name == "sequence" and isinstance(s, OnlineSequence) and s.learn_seconds:
            fit_info["sequence_learned_events_per_s"] = round(s.model.learned_events / s.learn_seconds, 1)
    return result, fit_info


def _loo_numbers(result: LooResult, opts: EvalOptions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    groups = {
        "cold": result.learned == 0,
        "warm": result.learned > 0,
        f"rare{RARE_BELOW}": result.learned < RARE_BELOW,
    }
    base = result.test.get("default")
    for name, per_user in result.test.items():
        entry: dict[str, Any] = {"n_users": len(per_user)}
        for m in RANK_METRICS:
            values = np.asarray([u[m] for u in per_user])
            entry[m] = bootstrap_means(values, opts.n_boot, opts.seed).as_list()
            if base is not None and name != "default" and m == "recall@10":
                # Paired: the same users resampled for both, so what the users share cancels out.
                paired = values - np.asarray([u[m] for u in base])
                entry[f"{m}_minus_default"] = bootstrap_means(paired, opts.n_boot, opts.seed).as_list()
            entry[f"val_{m}"] = round(float(np.mean([u[m] for u in result.val[name]])), 6)
            for label, mask in groups.items():
                entry[f"{label}_{m}"] = bootstrap_means(values[mask], opts.n_boot, opts.seed).as_list()
        # Cold targets ranked among the items no model had events for (``protocols._rank_all``).
        new = np.asarray([u["new_items_recall@10"] for u in per_user if "new_items_recall@10" in u])
        entry["cold_new_items_recall@10"] = bootstrap_means(new, opts.n_boot, opts.seed).as_list()
        val_new = [u["new_items_recall@10"] for u in result.val[name] if "new_items_recall@10" in u]
        entry["val_cold_new_items_recall@10"] = round(float(np.mean(val_new)), 6) if val_new else None
        entry["n_val_cold"] = len(val_new)
        entry["n_cold"] = int(groups["cold"].sum())
        entry[f"n_rare{RARE_BELOW}"] = int(groups[f"rare{RARE_BELOW}"].sum())
        out[name] = entry
    return out


def _learning_curve(result: LooResult) -> dict[str, Any]:
    """Recall@10 of the probed events per ``CURVE_POINTS``-th of the training events, per model."""
    out: dict[str, Any] = {}
    for name, rows in result.curve.items():
        window = max(1, -(-(rows[-1][0] + 1) // CURVE_POINTS))
        ends, values = [], []
        n = hits = 0.0
        for k, (before, scored, recall) in enumerate(rows):
            n, hits = n + scored, hits + recall
            last = k == len(rows) - 1
            if n and (last or rows[k + 1][0] // window > before // window):
                ends.append(before)
                values.append(round(hits / n, 6))
                n = hits = 0.0
        out[name] = values
        out["_ends"] = ends
    return out


def _subset(pred: CategoryPredictions, mask: np.ndarray) -> CategoryPredictions:
    return CategoryPredictions(pred.classes, pred.proba[mask], pred.truth[mask], pred.user[mask])


def _prequential_numbers(result: PrequentialResult, opts: EvalOptions, status: Status) -> dict[str, Any]:
    out: dict[str, Any] = {}
    names = list(result.models)
    for k, name in enumerate(names):
        status("prequential: bootstrap intervals", k, len(names))
        pred = result.models[name]
        full = name in ("default", LAGGED, "popularity", "most_frequent", "last_category") or name.startswith(
            "deployed ("
        )
        n_boot = opts.n_boot_classification if full else 0
        ci = bootstrap_classification(pred, result.n_users, n_boot, opts.seed)
        entry: dict[str, Any] = {m: v.as_list() for m, v in ci.items()}
        entry["n_events"] = len(pred.proba)
        for label, mask in (("cold", result.cold), ("warm", ~result.cold)):
            sub = bootstrap_classification(_subset(pred, mask), result.n_users, n_boot, opts.seed)
            entry[f"{label}_acc@1"] = sub["acc@1"].as_list()
            entry[f"{label}_hit@5"] = sub["hit@5"].as_list()
        entry["n_cold"] = int(result.cold.sum())
        # The second half of the replay alone: a lead won early (while the baselines have little to
        # count) must also hold once everyone has history.
        late = np.arange(len(pred.proba)) >= len(pred.proba) // 2
        # The first half is where defaults are chosen (validation): its acc@1, a point value.
        entry["first_half_acc@1"] = round(float(top1_hits(_subset(pred, ~late)).mean()), 6)
        sub = bootstrap_classification(_subset(pred, late), result.n_users, n_boot, opts.seed)
        entry["second_half_acc@1"] = sub["acc@1"].as_list()
        entry["second_half_log_loss"] = sub["log_loss"].as_list()
        if full and name != "most_frequent":
            paired = paired_accuracy_difference(
                _subset(pred, late), _subset(result.models["most_frequent"], late), result.n_users,
                opts.n_boot, opts.seed,
            )  # fmt: skip
            entry["second_half_acc@1_minus_most_frequent"] = paired.as_list()
        if full:
            entry["calibration"] = reliability(pred)
        out[name] = entry
    return out


def _rolling_accuracy(result: PrequentialResult, window: int = 5000) -> dict[str, list[float]]:
    """acc@1 over the last ``window`` events, every ``window // 5`` events: the plot over time."""
    out = {}
    step = max(window // 5, 1)
    for name in ("default", "most_frequent", "last_category", "popularity"):
        pred = result.models[name]
        hit = top1_hits(pred)
        csum = np.concatenate([[0], np.cumsum(hit)])
        ends = np.arange(min(window, len(hit)), len(hit) + 1, step)
        out[name] = [round(float((csum[e] - csum[max(e - window, 0)]) / min(window, e)), 6) for e in ends]
        out["_ends"] = ends.tolist()
    return out


def evaluate(
    log: EventLog,
    core: InterestCore,
    out: Path,
    opts: EvalOptions = EvalOptions(),
    status: Status | None = None,
    command: str = "",
) -> dict[str, Any]:
    status = status or (lambda *_: None)
    out.mkdir(parents=True, exist_ok=True)
    name = log.name + (f"-new-items{round(100 * opts.new_items)}" if opts.new_items else "")
    numbers: dict[str, Any] = {
        "dataset": name,
        "command": command,
        "events": len(log.events),
        "users": len(log.users),
        "items": len(log.items),
        "rejected": dict(log.rejected),
        "data_notes": log.notes,
        "config": {k: v for k, v in asdict(core.config).items()},
        "encoder": core.encoder.name,
        "options": asdict(opts),
    }
    seconds: dict[str, float] = {}  # kept apart: the numbers file is identical run to run, times are not
    summary: dict[str, Any] = {}
    catalogue = _embed_catalogue(core, log)  # (item matrix in catalogue order, text -> vector)
    if opts.protocol in ("loo", "both"):
        t0 = time.perf_counter()
        split = loo_split(log, opts.new_items, opts.seed)
        loo, fit_info = _loo(log, split, core, catalogue, opts, status)
        numbers["loo"] = _loo_numbers(loo, opts)
        numbers["loo_learning_curve"] = _learning_curve(loo)
        seconds["sasrec_train"] = fit_info.pop("train_seconds", None)
        seconds["sasrec_refit"] = fit_info.pop("refit_seconds", None)
        seconds["sasrec_log"] = fit_info.pop("log", [])
        seconds["sequence_learned_events_per_s"] = fit_info.pop("sequence_learned_events_per_s", None)
        numbers["sasrec_training"] = fit_info
        numbers["loo_split"] = {
            "train": len(split.train),
            "val": len(split.val),
            "test": len(split.test),
            "test_ties": tied_test_events(split),
            "new_items": len(split.new_items),
            "train_dropped_new_items": split.dropped,
        }
        seconds["loo"] = round(time.perf_counter() - t0, 1)
        summary["loo"] = {
            name: {m: e[m][0] for m in RANK_METRICS} | {"n_users": e["n_users"]}
            for name, e in numbers["loo"].items()
            if ":" not in name
        }
    if opts.protocol in ("prequential", "both"):
        t0 = time.perf_counter()
        embeddings = catalogue[1]
        cores = {"default": core}
        if opts.ablations:
            cores |= {f"default: {n}": with_config(core, **ch) for n, ch in PREQUENTIAL_VARIANTS.items()}
        deployed = {}
        if opts.partitions:
            deployed[f"deployed ({opts.partitions} partition replicas)"] = (
                opts.partitions,
                opts.head_sync_events,
            )
            if opts.ablations:
                deployed["deployed: replicas never synced"] = (opts.partitions, 0)
        total, done = len(log.events) * (len(cores) + len(deployed)), 0

        def progress(n: int) -> None:
            nonlocal done
            done += n
            status("prequential: replaying every event", done, total)

        lagged = {LAGGED: (core, HEAD_LAG)}
        if opts.ablations:
            alone = PREQUENTIAL_VARIANTS["head alone (no profile blend)"]
            lagged[f"default: head alone, weights lagged {HEAD_LAG:,} events"] = (
                with_config(core, **alone),
                HEAD_LAG,
            )
        total += len(log.events) * len(lagged)
        preq = run_prequential(log, cores, embeddings, opts.batch_size, progress, deployed, lagged)
        numbers["prequential"] = _prequential_numbers(preq, opts, status)
        numbers["prequential_over_time"] = _rolling_accuracy(preq)
        seconds["prequential"] = round(time.perf_counter() - t0, 1)
        summary["prequential"] = {
            name: {m: e[m][0] for m in ("acc@1", "hit@5", "macro_f1", "weighted_f1", "auc_macro", "log_loss")}
            | {"n_events": e["n_events"]}
            for name, e in numbers["prequential"].items()
            if ":" not in name
        }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (out / f"eval-{name}.json").write_text(json.dumps(numbers, indent=1, sort_keys=True) + "\n")
    (out / f"eval-{name}-timings.json").write_text(json.dumps(seconds, indent=1) + "\n")
    numbers["timings"] = seconds
    from evaluation.report import write_report

    write_report(numbers, out)
    return numbers
