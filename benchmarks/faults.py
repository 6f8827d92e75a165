"""The fault-injection suite at full size; writes benchmarks/results/faults.md (and faults.json).

    python benchmarks/faults.py [--quick] [--only kill9,multi,broker,lost,hostile,flood]

Scenarios (tests/faults.py has the code; tests/test_faults.py runs the same at CI size):
  kill9   : kill -9 one worker 20 times during a 100,000-event replay with 5% duplicates
  multi   : two workers, a third joins, one is killed (-9) and restarted, one leaves
  broker  : the broker stops and starts with its data kept, then restarts with its data wiped
  lost    : a stopped worker's state folder is deleted; it rebuilds from the changelogs
  hostile : a poison event, 10,000 fuzzed/mutated records, unkeyed, misrouted and future-dated events
  flood   : a producer far faster than the worker (~15,000 events/s for 15 s); memory, loss and drain
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import faults  # noqa: E402

from models.encoder import TextEncoder  # noqa: E402
from streams.devbroker import LocalBroker  # noqa: E402

ORDER = ["kill9", "multi", "broker", "broker-wiped", "lost", "hostile", "flood"]
FULL = {
    "kill9": {"events": 100_000, "users": 5_000, "kills": 20},
    "multi": {"events": 40_000, "users": 2_000, "rate": 500},
    "broker": {"events": 20_000, "users": 1_000},
    "lost": {"users": 20_000},
    "hostile": {"fuzzed": 10_000},
    "flood": {"seconds": 15, "users": 10_000},
}
QUICK = {
    "kill9": {"events": 6000, "users": 300, "kills": 4},
    "multi": {"events": 8000, "users": 400, "rate": 250},
    "broker": {"events": 3000, "users": 200},
    "lost": {"users": 500},
    "hostile": {"fuzzed": 500},
    "flood": {"seconds": 3, "users": 1000},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the CI sizes")
    ap.add_argument("--only", default=",".join(FULL), help="comma-separated scenarios")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()
    sizes = QUICK if args.quick else FULL
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    work = Path(tempfile.mkdtemp(prefix="interest-faults-"))
    encoder = TextEncoder()
    broker = LocalBroker(work / "broker")
    bootstrap = broker.start().bootstrap
    tallies: list[tuple[str, faults.Tally]] = []
    try:
        for name in wanted:
            size = sizes[name]
            print(f"--- {name} {size}", flush=True)
            if name == "kill9":
                got = [faults.kill9(bootstrap, work, encoder, **size)]
            elif name == "multi":
                got = [faults.several_workers(bootstrap, work, encoder, **size)]
            elif name == "broker":
                got = list(faults.broker_restarts(broker, work, encoder, **size))
            elif name == "lost":
                got = [faults.lost_state_dir(bootstrap, work, encoder, **size)]
            elif name == "hostile":
                got = [faults.hostile_input(bootstrap, work, encoder, **size)]
            elif name == "flood":
                got = [faults.backpressure(bootstrap, work, encoder, **size)]
            else:
                raise SystemExit(f"unknown scenario {name}")
            for tally in got:
                print(json.dumps(tally.row()), tally.notes, flush=True)
            keys = ["broker", "broker-wiped"] if name == "broker" else [name]
            tallies.extend(zip(keys, got, strict=True))
    finally:
        broker.stop()
    write_report(Path(args.out), tallies, wanted, args.quick)
    return 0 if all(t.ok() for _, t in tallies) else 1


def write_report(out: Path, tallies: list[tuple[str, faults.Tally]], wanted: list[str], quick: bool) -> None:
    """faults.md and faults.json; a run of some scenarios (``--only``) replaces just their rows."""
    out.mkdir(parents=True, exist_ok=True)
    name = "faults-quick" if quick else "faults"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    cmd = "python benchmarks/faults.py" + (" --quick" if quick else "") + f" --only {','.join(wanted)}"
    new = [{"key": key, **t.row(), "commit": commit, "command": cmd, "date": time.strftime("%Y-%m-%d"),
            "notes": t.notes} for key, t in tallies]  # fmt: skip
    old_path = out / f"{name}.json"
    kept = []
    if old_path.exists():
        rerun = {key for key, _ in tallies}
        kept = [row for row in json.loads(old_path.read_text()) if row.get("key") not in rerun]
    rows = sorted(kept + new, key=lambda row: ORDER.index(row["key"]))
    old_path.write_text(json.dumps(rows, indent=1))
    lines = [
        "# Fault-injection report",
        "",
        f"`make faults` (= `python benchmarks/faults.py`), on {platform.machine()} with "
        f"{os.cpu_count()} cores and one local Kafka broker (KRaft, from Maven Central) on the same machine. "
        f"Sizes: `{json.dumps(FULL if not quick else QUICK)}`. Each row says the commit and command that "
        "produced it (a run of some scenarios replaces their rows).",
        "",
        "Each scenario's expected result is a single clean pass of the same events through the core "
        "(`models.replay`). *Lost* and *applied twice* compare every user's `events_applied` in the "
        "changelog with that pass; *users wrong* also compares the interest vector (1e-5); *last update "
        "missing* counts users whose newest published update does not carry all their events; *versions "
        "backwards* counts updates older than one already seen for the user, or a repeated version with "
        "other content. Recovery: from the fault to the first interest update after it.",
        "",
    ]
    cols = [c for c in rows[0] if c not in ("key", "notes", "command", "date")] if rows else []
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for row in rows:
        lines.append("| " + " | ".join(str(row[c]) for c in cols) + " |")
    lines.append("")
    for row in rows:
        lines.append(
            f"- **{row['scenario']}** ({row['date']}, `{row['command']}`): " + "; ".join(row["notes"])
        )
    lines.append("")
    (out / f"{name}.md").write_text("\n".join(lines))
    print(f"wrote {out / f'{name}.md'}")


if __name__ == "__main__":
    raise SystemExit(main())
