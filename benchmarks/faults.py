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
import platform
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
    tallies: list[faults.Tally] = []
    t0 = time.monotonic()
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
            tallies.extend(got)
    finally:
        broker.stop()
    write_report(Path(args.out), tallies, sizes, wanted, time.monotonic() - t0, args.quick)
    return 0 if all(t.ok() for t in tallies) else 1


def write_report(out: Path, tallies: list[faults.Tally], sizes: dict, wanted: list[str], seconds: float,
                 quick: bool) -> None:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    rows = [t.row() for t in tallies]
    cmd = "python benchmarks/faults.py" + (" --quick" if quick else "")
    if wanted != list(FULL):
        cmd += f" --only {','.join(wanted)}"
    lines = [
        "# Fault-injection report",
        "",
        f"Command: `{cmd}` (`make faults`), {time.strftime('%Y-%m-%d')}, on {platform.machine()} with "
        f"{__import__('os').cpu_count()} cores, one local Kafka broker (KRaft, from Maven Central) on the "
        f"same machine; {seconds / 60:.0f} min in all. Sizes: `{json.dumps({k: sizes[k] for k in wanted})}`.",
        "",
        "Each scenario's expected result is a single clean pass of the same events through the core "
        "(`models.replay`). *Lost* and *applied twice* compare every user's `events_applied` in the "
        "changelog with that pass; *users wrong* also compares the interest vector (1e-5); *last update "
        "missing* counts users whose newest published update does not carry all their events; *versions "
        "backwards* counts updates older than one already seen for the user, or a repeated version with "
        "other content. Recovery: from the fault to the first interest update after it.",
        "",
    ]
    cols = list(rows[0]) if rows else []
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for row in rows:
        lines.append("| " + " | ".join(str(row[c]) for c in cols) + " |")
    lines.append("")
    for tally in tallies:
        if tally.notes:
            lines.append(f"- **{tally.scenario}**: " + "; ".join(tally.notes))
    lines.append("")
    name = "faults-quick" if quick else "faults"
    (out / f"{name}.md").write_text("\n".join(lines))
    (out / f"{name}.json").write_text(json.dumps([{**t.row(), "notes": t.notes} for t in tallies], indent=1))
    print(f"wrote {out / f'{name}.md'}")


if __name__ == "__main__":
    raise SystemExit(main())
