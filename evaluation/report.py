"""The human-readable report: ``eval-<dataset>.md`` and its PNG plots, from the numbers dict only.

Rendering reads nothing but ``evaluate``'s numbers, so a report can be rebuilt from a saved
``eval-<dataset>.json`` and two runs with the same numbers render the same text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Published reference, same protocol and data (from the issue that asked for this evaluation; RecBole
# runs on a GPU, not ours): shown next to our own numbers, never mixed into them.
REFERENCE_ML_LATEST_SMALL = [
    ("popularity (train counts)", 0.039, 0.018, 0.018),
    ("item-kNN (RecBole ItemKNN)", 0.069, 0.033, 0.031),
    ("BPR-MF (RecBole)", 0.046, 0.020, 0.020),
    ("SASRec (RecBole, CE loss, 34 epochs, GPU)", 0.125, 0.067, 0.059),
]
LOO_BASELINES = ("popularity", "last_item", "static_mean", "item_knn", "interest_vector")
PREQ_BASELINES = ("popularity", "most_frequent", "last_category")
PNG_META = {"Software": None}  # no version stamp: same numbers, same bytes


def _num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _ci(v: list[float | None], digits: int = 3) -> str:
    if v[1] is None:
        return _num(v[0], digits)
    return f"{_num(v[0], digits)} [{_num(v[1], digits)}, {_num(v[2], digits)}]"


def _beats(ours: list[float], theirs: list[float], higher_is_better: bool = True) -> bool:
    """Non-overlapping 95% intervals in our favour."""
    if None in ours or None in theirs:
        return False
    return ours[1] > theirs[2] if higher_is_better else ours[2] < theirs[1]


def _chosen_scorer(loo: dict[str, Any]) -> list[str]:
    """The recommendation scorer validation picks among the counting ranker (``default``), the online
    sequential model and their mixes, judged on test against SASRec and the counting ranker."""
    # "mix w, synced every N events" rows measure the served mix with stale weights: not candidates
    candidates = [
        m for m in loo if m in ("default", "sequence") or (m.startswith("mix ") and "synced" not in m)
    ]
    if len(candidates) < 2:
        return []
    chosen = max(candidates, key=lambda m: (loo[m]["val_recall@10"], m == "default"))
    c = loo[chosen]["recall@10"]
    lines = [
        f"- Recommendation scorer chosen on validation Recall@10 among {', '.join(candidates)}: "
        f"**{chosen}** (validation {loo[chosen]['val_recall@10']:.3f}); test {_ci(c)}"
    ]
    if "sasrec" in loo:
        s = loo["sasrec"]["recall@10"]
        mark = "yes" if c[0] >= s[0] else "**no**"
        ratio = c[0] / max(s[0], 1e-12)
        lines.append(f"- {chosen} / SASRec (ours, offline): {ratio:.0%} (goal: at least 100%): {mark}")
    if chosen != "default":
        d = loo["default"]["recall@10"]
        mark = "yes" if _beats(c, d) else "**no**"
        lines.append(
            f"- {chosen} vs the counting ranker (default): {_ci(c)} vs {_ci(d)}, intervals apart: {mark}; "
            f"paired difference {_ci(loo[chosen].get('recall@10_minus_default', [None] * 3))}"
        )
    n_cold = loo[chosen].get("n_cold", 0)
    if n_cold:
        cold = loo[chosen]["cold_recall@10"]
        best = max(loo, key=lambda m: (loo[m]["cold_recall@10"][0] or 0.0, m == chosen))
        mark = "yes" if (cold[1] or 0.0) > 0 else "**no**"
        lines.append(
            f"- never-seen test items ({n_cold}), Recall@10 of {chosen}: {_ci(cold)}, clearly above zero "
            f"(interval above 0): {mark}; best of all models: {best} {_ci(loo[best]['cold_recall@10'])}"
        )
    return lines


def _goals(n: dict[str, Any]) -> list[str]:
    lines = []
    loo, preq = n.get("loo"), n.get("prequential")
    if loo and "default" in loo:
        d = loo["default"]["recall@10"]
        for b in LOO_BASELINES:
            if b in loo:
                mark = "yes" if _beats(d, loo[b]["recall@10"]) else "**no**"
                lines.append(f"- Recall@10 default vs {b}: {_ci(d)} vs {_ci(loo[b]['recall@10'])}: {mark}")
        if "sasrec" in loo:
            s = loo["sasrec"]["recall@10"]
            lines.append(
                f"- Recall@10 default / SASRec (ours, offline): {d[0]:.3f} / {s[0]:.3f} = "
                f"{d[0] / max(s[0], 1e-12):.0%} (goal: at least 100%)"
            )
        if n.get("dataset") == "movielens":  # the reference was measured on the sample only
            lines.append(f"- Recall@10 default / SASRec (RecBole reference 0.125): {d[0] / 0.125:.0%}")
        lines += _chosen_scorer(loo)
    if preq and "default" in preq:
        d = preq["default"]["acc@1"]
        for b in PREQ_BASELINES:
            if b in preq:
                mark = "yes" if _beats(d, preq[b]["acc@1"]) else "**no**"
                lines.append(f"- acc@1 default vs {b}: {_ci(d)} vs {_ci(preq[b]['acc@1'])}: {mark}")
        for name in [m for m in preq if m == "default" or m.startswith("default, head weights lagged")]:
            late = preq[name].get("second_half_acc@1")
            if late and "most_frequent" in preq:
                theirs = preq["most_frequent"]["second_half_acc@1"]
                mark = "yes" if _beats(late, theirs) else "**no**"
                paired = preq[name].get("second_half_acc@1_minus_most_frequent", [None] * 3)
                lines.append(
                    f"- second-half acc@1 {name} vs most_frequent: {_ci(late)} vs {_ci(theirs)}, intervals "
                    f"apart: {mark}; paired difference {_ci(paired)}"
                )
    return lines


def _plots(n: dict[str, Any], out: Path) -> list[str]:
    name = n["dataset"]
    files = []
    if "loo" in n:
        models = [m for m in n["loo"] if ":" not in m]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, metric in zip(axes, ("recall@10", "ndcg@10"), strict=True):
            vals = [n["loo"][m][metric] for m in models]
            ax.barh(
                models,
                [v[0] for v in vals],
                xerr=[[v[0] - v[1] for v in vals], [v[2] - v[0] for v in vals]],
                color=["tab:red" if m == "default" else "tab:gray" for m in models],
            )
            ax.set_xlabel(f"{metric} (leave-one-out, 95% CI)")
            ax.invert_yaxis()
        fig.tight_layout()
        files.append(f"eval-{name}-loo.png")
        fig.savefig(out / files[-1], dpi=110, metadata=PNG_META)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.4
        ys = range(len(models))
        for k, label in enumerate(("warm", "cold")):
            vals = [n["loo"][m][f"{label}_recall@10"][0] or 0.0 for m in models]  # None: no such item
            ax.barh([y + k * width for y in ys], vals, height=width, label=f"{label} test items")
        ax.set_yticks([y + width / 2 for y in ys], models)
        ax.invert_yaxis()
        ax.set_xlabel("recall@10, test items seen in training (warm) or not (cold)")
        ax.legend()
        fig.tight_layout()
        files.append(f"eval-{name}-cold-warm.png")
        fig.savefig(out / files[-1], dpi=110, metadata=PNG_META)
        plt.close(fig)
    if n.get("loo_learning_curve"):
        series = n["loo_learning_curve"]
        fig, ax = plt.subplots(figsize=(9, 4))
        for m, values in series.items():
            if m != "_ends":
                ax.plot(series["_ends"][: len(values)], values, label=m, lw=2 if m == "default" else 1)
        ax.set_xlabel("training events learned (event-time order)")
        ax.set_ylabel("Recall@10, ranked before learned")
        ax.set_title("learning curves: 16 events per batch ranked, then learned", fontsize=9)
        ax.legend()
        fig.tight_layout()
        files.append(f"eval-{name}-learning.png")
        fig.savefig(out / files[-1], dpi=110, metadata=PNG_META)
        plt.close(fig)
    calibrated = {m: e["calibration"] for m, e in (n.get("prequential") or {}).items() if "calibration" in e}
    if calibrated:
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot([0, 1], [0, 1], color="lightgray", lw=1)
        for m, cal in calibrated.items():
            if cal["bins"]:
                ax.plot([b[0] for b in cal["bins"]], [b[1] for b in cal["bins"]], marker="o",
                        label=f"{m} (ECE {cal['ece']:.3f})", lw=2 if m == "default" else 1)  # fmt: skip
        ax.set_xlabel("top-1 probability (bin mean)")
        ax.set_ylabel("the top category's share of the item's categories")
        ax.legend(fontsize=7)
        fig.tight_layout()
        files.append(f"eval-{name}-calibration.png")
        fig.savefig(out / files[-1], dpi=110, metadata=PNG_META)
        plt.close(fig)
    if "prequential_over_time" in n:
        series = n["prequential_over_time"]
        fig, ax = plt.subplots(figsize=(9, 4))
        for m, values in series.items():
            if m != "_ends":
                ax.plot(series["_ends"], values, label=m, lw=2 if m == "default" else 1)
        ax.set_xlabel("events replayed (event-time order)")
        ax.set_ylabel("acc@1 over the last 5,000 events")
        ax.legend()
        fig.tight_layout()
        files.append(f"eval-{name}-prequential.png")
        fig.savefig(out / files[-1], dpi=110, metadata=PNG_META)
        plt.close(fig)
    return files


def render_markdown(n: dict[str, Any], plots: list[str]) -> str:
    L: list[str] = []
    L.append(f"# Evaluation: {n['dataset']}")
    L.append("")
    L.append(
        f"Written by `{n['command'] or 'interest-stream evaluate'}`; "
        f"every number is in `eval-{n['dataset']}.json`."
    )
    L.append(
        f"{n['events']:,} events, {n['users']:,} users, {n['items']:,} items; rejected records: "
        f"{n['rejected'] or 'none'}. Encoder `{n['encoder']}`. Intervals: 95% bootstrap over users."
    )
    notes = n.get("data_notes") or {}
    if notes.get("tag_rule"):
        dropped = ", ".join(f"{v:,} {k}" for k, v in notes.get("tags_dropped", {}).items()) or "none"
        L.append(f"{notes['tag_rule']} Tags left out: {dropped}.")
    L.append("")
    if n.get("loo") or n.get("prequential"):
        L.append("## Goals")
        L += _goals(n)
        L.append("")
    if "loo" in n:
        s = n["loo_split"]
        L.append("## Next item: leave-one-out by time, full ranking")
        L.append(
            f"Per user the last event is the test item, the one before it validation, the rest training "
            f"({s['train']:,} / {s['val']:,} / {s['test']:,} events). The test item is ranked against all "
            f"{n['items']:,} items with the user's earlier items masked; metrics are expectations under "
            "random tie-breaking. Online models learn the training events once, in event-time order, then "
            "the validation events; SASRec trains offline on the training split. Equal timestamps are "
            f"ordered by event id everywhere; {s.get('test_ties', 0):,} test events tie in time with the "
            "user's validation event."
        )
        slots, within = n.get("config", {}).get("fresh_slots", 0), n.get("config", {}).get("fresh_within", 10)
        if slots:
            L.append("")
            L.append(
                f"The default and the mixes are judged on the list a worker serves: the last {slots} of its "
                f"first {within} places go to new items (no learned event), those nearest by text to the "
                "user's recent items (`fresh_slots`; the ablation *default: no fresh places* turns them off)."
            )
        if s.get("new_items"):
            L.append("")
            L.append(
                f"**New items**: {s['new_items']:,} items, drawn at random, are new: none of their "
                f"{s['train_dropped_new_items']:,} training events is learned (they are dropped from the "
                "training split), while the items stay in the catalogue with their text. Test events on them "
                "are the *cold* rows below: what each model makes of an item it has never seen."
            )
        L.append("")
        L.append("| model | Recall@10 | Recall@20 | NDCG@10 | MRR | val Recall@10 |")
        L.append("| --- | --- | --- | --- | --- | --- |")
        refit = n.get("sasrec_training", {}).get("refit_epochs")
        for m, e in n["loo"].items():
            if ":" in m:
                continue
            val = f"{e['val_recall@10']:.3f}"
            if m == "sasrec" and refit:  # the refit model has trained on the validation events
                val = f"{n['sasrec_training']['best_val_recall10']:.3f} (before the refit)"
            L.append(
                f"| {m} | {_ci(e['recall@10'])} | {_ci(e['recall@20'])} | {_ci(e['ndcg@10'])} | "
                f"{_ci(e['mrr'])} | {val} |"
            )
        if refit:
            t = n["sasrec_training"]
            L.append("")
            L.append(
                f"SASRec: {t['epochs']} epochs on the training split (stopped by "
                f"{t['stopped_by'].replace('_', ' ')}; "
                f"best validation Recall@10 {t['best_val_recall10']:.3f} at epoch {t['best_epoch']}), then "
                f"retrained from scratch on training + validation events for {t['refit_epochs']} epochs (the "
                "best centred 5-epoch mean of the validation curve), which is the model tested."
            )
        if n["dataset"] == "movielens":
            L.append("")
            L.append("Published reference on the same data and protocol (not run here):")
            L.append("")
            L.append("| model | Recall@10 | NDCG@10 | MRR |")
            L.append("| --- | --- | --- | --- |")
            for name, r, nd, mrr in REFERENCE_ML_LATEST_SMALL:
                L.append(f"| {name} | {r:.3f} | {nd:.3f} | {mrr:.3f} |")
        L.append("")
        first = next(iter(n["loo"].values()))
        n_cold, n_rare = first["n_cold"], first.get("n_rare5", 0)
        L.append(
            f"### Cold, rare and warm test items ({n_cold} of {s['test']} test items never seen in "
            f"training, {n_rare} with fewer than 5 training events)"
        )
        L.append("")
        L.append(
            "*Cold among new items*: a cold test item ranked only against the items no event had touched "
            "yet (how a model orders new items, apart from whether it puts one above the items it knows). "
            "Validation's figure in brackets."
        )
        L.append("")
        L.append(
            "| model | warm Recall@10 | rare (< 5 events) Recall@10 | cold (never seen) Recall@10 "
            "| cold among new items Recall@10 |"
        )
        L.append("| --- | --- | --- | --- | --- |")
        for m, e in n["loo"].items():
            rare = _ci(e["rare5_recall@10"]) if "rare5_recall@10" in e else "-"
            among = "-"
            if e.get("cold_new_items_recall@10", [None])[0] is not None:
                val = e.get("val_cold_new_items_recall@10")
                among = _ci(e["cold_new_items_recall@10"]) + (f" ({val:.3f})" if val is not None else "")
            L.append(f"| {m} | {_ci(e['warm_recall@10'])} | {rare} | {_ci(e['cold_recall@10'])} | {among} |")
        L.append("")
        ablations = [m for m in n["loo"] if ":" in m]
        if ablations:
            L.append("### Ablations and grids (leave-one-out)")
            L.append("")
            L.append("| variant | Recall@10 | NDCG@10 | val Recall@10 |")
            L.append("| --- | --- | --- | --- |")
            for m in ["default", "interest_vector", *ablations]:
                e = n["loo"][m]
                L.append(f"| {m} | {_ci(e['recall@10'])} | {_ci(e['ndcg@10'])} | {e['val_recall@10']:.3f} |")
            L.append("")
        if n.get("sasrec_training"):
            t = n["sasrec_training"]
            L.append(
                f"SASRec training: {t.get('epochs')} epochs, best epoch {t.get('best_epoch')} "
                f"(validation Recall@10 {_num(t.get('best_val_recall10'))}), "
                f"stopped by {t.get('stopped_by')}; then retrained on training + validation events for "
                f"{t.get('refit_epochs')} epochs (the best 5-epoch mean of the validation curve); "
                f"settings {t.get('config')}."
            )
            L.append("")
    if "prequential" in n:
        L.append("## Next category: prequential (test-then-train), every event")
        L.append(
            "Each event's categories are predicted from the state before it, then learned, through the same "
            "`InterestCore.apply` micro-batches the worker runs. acc@1: the top category is one of the "
            "item's; F1 and AUC treat the item's categories as the truth set."
        )
        L.append("")
        L.append("| model | acc@1 | hit@5 | macro-F1 | weighted F1 | AUC (macro OvR) | log-loss |")
        L.append("| --- | --- | --- | --- | --- | --- | --- |")
        for m, e in n["prequential"].items():
            if ":" in m:
                continue
            L.append(
                f"| {m} | {_ci(e['acc@1'])} | {_ci(e['hit@5'])} | {_ci(e['macro_f1'])} | "
                f"{_ci(e['weighted_f1'])} | {_ci(e['auc_macro'])} | {_ci(e['log_loss'])} |"
            )
        L.append("")
        n_cold = n["prequential"]["default"]["n_cold"]
        L.append(f"### Cold and warm items ({n_cold:,} events are an item's first interaction)")
        L.append("")
        L.append("| model | warm acc@1 | cold acc@1 |")
        L.append("| --- | --- | --- |")
        for m, e in n["prequential"].items():
            if ":" not in m:
                L.append(f"| {m} | {_ci(e['warm_acc@1'])} | {_ci(e['cold_acc@1'])} |")
        L.append("")
        L.append("### The second half of the replay, and calibration")
        L.append("")
        L.append(
            "acc@1 and log-loss over the later half of the events only (a lead won early, while the "
            "baselines have little to count, must hold once users have history); the first half is where "
            "the defaults were chosen (validation); ECE: expected calibration error of the top-1 probability "
            "against the share of the item's categories that the top category holds (an item with n "
            "categories gives each 1/n: what a probability here means and what log-loss scores; 10 bins, "
            "the reliability plot shows them); ECE (hit): against the top category being one of them, "
            "which a calibrated share stays below when items have several. The lagged row predicts with "
            "head weights up to "
            "2,560 events old: in the replay one user's events follow each other, in a busy stream thousands "
            "of other users' come between them."
        )
        L.append("")
        L.append("| model | first-half acc@1 | second-half acc@1 | second-half log-loss | ECE | ECE (hit) |")
        L.append("| --- | --- | --- | --- | --- | --- |")
        for m, e in n["prequential"].items():
            if ":" not in m and "second_half_acc@1" in e:
                cal = e.get("calibration") or {}
                ece = f"{_num(cal['ece'])} | {_num(cal['ece_hit'])}" if "ece_hit" in cal else "- | -"
                half = f"{_ci(e['second_half_acc@1'])} | {_ci(e['second_half_log_loss'])}"
                first = _num(e["first_half_acc@1"]) if "first_half_acc@1" in e else "-"
                L.append(f"| {m} | {first} | {half} | {ece} |")
        L.append("")
        ablations = [m for m in n["prequential"] if ":" in m]
        if ablations:
            L.append("### Ablations and grids (prequential; point values, intervals only for the main table)")
            L.append("")
            L.append("| variant | acc@1 | first-half acc@1 | hit@5 | macro-F1 | log-loss |")
            L.append("| --- | --- | --- | --- | --- | --- |")
            for m in ["default", *ablations]:
                e = n["prequential"][m]
                L.append(
                    f"| {m} | {e['acc@1'][0]:.3f} | {_num(e.get('first_half_acc@1'))} | "
                    f"{e['hit@5'][0]:.3f} | {e['macro_f1'][0]:.3f} | {e['log_loss'][0]:.3f} |"
                )
            L.append("")
    if plots:
        L.append("## Plots")
        L.append("")
        L += [f"![{p}]({p})" for p in plots]
        L.append("")
    L.append("## Settings")
    L.append("")
    L.append(f"Model configuration (`InterestConfig`): `{n['config']}`")
    L.append("")
    L.append(f"Evaluation options: `{n['options']}`")
    L.append("")
    return "\n".join(L)


def write_report(numbers: dict[str, Any], out: Path) -> Path:
    plots = _plots(numbers, out)
    path = out / f"eval-{numbers['dataset']}.md"
    path.write_text(render_markdown(numbers, plots))
    return path
