"""``interest-stream``: worker, produce, tail, replay, evaluate, demo and the local development broker.

Every command reads the same settings (``streams.settings``), so ``KAFKA_BOOTSTRAP_SERVERS`` and the
``INTEREST_*`` variables apply everywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from models.sources import SourceError
from streams.devbroker import BrokerError, LocalBroker
from streams.settings import REPO_ROOT, Settings, SettingsError

DEFAULT_BROKER_DIR = REPO_ROOT / ".state" / "broker"


def _broker_dir() -> Path:
    return Path(os.environ.get("INTEREST_BROKER_DIR", DEFAULT_BROKER_DIR))


def _settings() -> Settings:
    """Settings, with the broker defaulting to the running local dev broker when none is configured."""
    env = dict(os.environ)
    if not env.get("KAFKA_BOOTSTRAP_SERVERS") and not env.get("INTEREST_BROKER"):
        info = LocalBroker(_broker_dir()).status()
        if info is not None:
            env["KAFKA_BOOTSTRAP_SERVERS"] = info.bootstrap
    return Settings.load(env)


class NothingListens(Exception):
    """No process accepts connections at any bootstrap address (refused, or the name does not resolve)."""


def _require_listener(settings: Settings) -> None:
    """Fail at once, for the commands a person runs by hand, where nothing listens at any bootstrap
    address: kafka-python takes 30 s to give up bootstrapping. An address that does not answer in time
    (a firewall, a slow link) is left to the client, which may yet reach it."""
    import socket

    why = []
    for address in settings.broker.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
            return
        except ConnectionRefusedError:
            why.append(f"{address.strip()}: connection refused")
        except socket.gaierror as exc:
            why.append(f"{address.strip()}: {exc.strerror or exc}")
        except (OSError, ValueError):  # timed out, no route, a malformed address: the client says more
            return
    raise NothingListens("; ".join(why))


def cmd_broker(args: argparse.Namespace) -> int:
    broker = LocalBroker(_broker_dir())
    if args.action == "start":
        info = broker.start(port=args.port, fresh=args.fresh)
        print(f"bootstrap={info.bootstrap}")
        print(f"pid={info.pid} started_in={info.started_s}s log={broker.log_path}", file=sys.stderr)
    elif args.action == "status":
        info = broker.status()
        if info is None:
            print("stopped")
            return 1
        print(f"bootstrap={info.bootstrap} pid={info.pid}")
    else:
        print("stopped" if broker.stop() else "not running")
    return 0


def limit_blas_threads(threads: int) -> None:
    """Cap numpy's BLAS threads (0: leave its default, one per core).

    The worker's products are small (a micro-batch by a few hundred features, a few dozen classes), where
    OpenBLAS's thread hand-offs cost more than they save, and the worker shares its cores with its
    Kafka client and, often, the broker: one thread made the core step twice as fast on 2 cores
    (``python benchmarks/core.py``, with ``OPENBLAS_NUM_THREADS=1`` and without).
    """
    if threads > 0:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads, user_api="blas")


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings()
    from streams.recovery import set_aside_if_stale
    from streams.topics import ensure_topics

    lost = set_aside_if_stale(settings)
    if lost:
        print(f"interest-stream worker: {lost}", file=sys.stderr)
    ensure_topics(settings, changelogs=True)
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = settings.broker  # streams.app reads the same settings
    from streams.agents import start_loading_core
    from streams.app import app

    limit_blas_threads(settings.blas_threads)
    start_loading_core()  # the encoder loads while faust starts
    sys.argv = ["interest-stream", "worker", "-l", args.loglevel, *args.faust_args]
    app.main()
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """The sequential model's trainer: learns from every partition, publishes snapshots to the workers."""
    import asyncio
    import logging

    from streams.catalog import Catalog
    from streams.model_sync import InputRecreated, Trainer, TrainerReplaced, quiet_fences
    from streams.settings import build_core
    from streams.stopping import exit_if_stop_outlasts
    from streams.topics import ensure_topics

    settings = _settings()
    log = logging.getLogger("interest_stream.trainer")
    state_dir = Path(args.state_dir) if args.state_dir else Path(settings.state_dir).parent / "trainer"
    state_dir.mkdir(parents=True, exist_ok=True)
    settings = dataclasses.replace(settings, state_dir=str(state_dir))  # its own embedding cache
    logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ensure_topics(settings)
    core = build_core(settings)
    catalog = Catalog(settings.broker, settings.items_topic, state_dir / "catalog")
    trainer = Trainer(settings, core, catalog, state_dir)

    async def main() -> None:
        stop = asyncio.Event()  # SIGTERM / Ctrl-C: learn what was read, publish it, then exit
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        asyncio.get_running_loop().set_exception_handler(quiet_fences)
        # publishing waits for a broker that may be gone: bounded like a worker's stop
        exit_if_stop_outlasts(stop.is_set, settings.stop_grace_s, log, "its checkpoint")
        await trainer.run(stop)

    try:
        asyncio.run(main())
    except InputRecreated as exc:
        # Exit as a worker whose broker lost its state does (code 3), so that the supervisor restarts
        # it: the restart resumes from the last checkpoint and reads the new topics from their beginning.
        log.critical("%s (did the broker lose its data?); exiting without a checkpoint so that the restarted "
                     "trainer reads them from their beginning", exc)  # fmt: skip
        return 3
    except TrainerReplaced as exc:
        # Not a failure: a newer trainer runs (a rolling update's replacement, or one started by mistake),
        # and exit code 0 keeps a supervisor that restarts on failure from starting this one again to
        # fence it back.
        log.warning("%s; this trainer (%s) stops: one trainer publishes", exc, trainer.instance)
        return 0
    return 0


def _records(args: argparse.Namespace):
    from models import sources

    if args.movielens is not None:
        folder = Path(args.movielens) if args.movielens else sources.MOVIELENS_SAMPLE
        return sources.movielens_events(folder, limit=args.limit, max_users=args.max_users), folder
    path = Path(args.file)
    reader = sources.read_csv if path.suffix.lower() == ".csv" else sources.read_jsonl
    records = reader(path, args.type)
    if args.limit is not None:
        import itertools

        records = itertools.islice(records, args.limit)
    return records, None


def cmd_produce(args: argparse.Namespace) -> int:
    from models import sources
    from streams.produce import count_lines, make_producer, produce_events, produce_items
    from streams.topics import ensure_topics

    settings = _settings()
    if args.file is None and args.movielens is None:
        args.movielens = ""
    records, folder = _records(args)
    if folder is None:  # a file: every line is read once before anything is sent, so a bad one sends none
        try:
            total = sum(1 for _ in records)
        except SourceError as exc:
            raise SourceError(f"{exc}; nothing was sent") from None
        records, _ = _records(args)
    _require_listener(settings)
    ensure_topics(settings)
    producer = make_producer(settings)
    if folder is not None:
        n_items = produce_items(producer, settings, sources.movielens_items(folder))
        print(f"catalog: {n_items} items -> {settings.items_topic}", file=sys.stderr)
        total = args.limit or count_lines(folder / "ratings.csv") - 1
    sent = produce_events(producer, settings, records, total=total, show_progress=not args.quiet,
                          rate=args.rate)  # fmt: skip
    producer.close()
    print(f"produced {sent} events", file=sys.stderr)
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from streams.view import Titles, consume, format_dead_letter, format_update

    settings = _settings()
    _require_listener(settings)
    title = Titles(settings)
    try:
        for r in consume(settings, from_beginning=not args.latest, dlq=True, idle_timeout_s=args.idle_exit):
            if r.topic == settings.updates_topic:
                print(json.dumps(r.value) if args.json else format_update(r.value, title), flush=True)
            else:
                print(format_dead_letter(r), flush=True)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Run the core over a file without Kafka (backfill / evaluation) and print prequential metrics."""
    from models import sources
    from models.replay import replay
    from streams.settings import build_core

    settings = _settings()
    if args.file is None and args.movielens is None:
        args.movielens = ""
    records, folder = _records(args)
    catalog = sources.movielens_items(folder) if folder is not None else {}
    core = build_core(settings)
    t0 = time.perf_counter()
    result = replay(records, core, catalog, batch_size=settings.max_batch)
    elapsed = time.perf_counter() - t0
    applied = sum(s.events_applied for s in result.states.values())
    summary = {
        "users": len(result.states),
        "events_applied": applied,
        "duplicates": result.duplicates,
        "rejected": dict(result.rejected),
        "updates": result.updates,
        "seconds": round(elapsed, 2),
        "events_per_s": round(applied / max(elapsed, 1e-9), 1),
        "prequential": result.head.stats.as_dict(),
        "classes": len(result.head.classes),
    }
    print(json.dumps(summary, indent=2))
    core.encoder.close()
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Both protocols, every baseline, intervals and the report; see ``evaluation.run``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from evaluation.data import DENSE_ITEMS, load_jsonl, load_movielens
    from evaluation.run import EvalOptions, evaluate
    from models.sources import MOVIELENS_SAMPLE
    from streams.settings import build_core

    if not 0.0 <= args.new_items < 1.0:
        print(
            f"evaluate: --new-items is a share of the catalogue in [0, 1), not {args.new_items}",
            file=sys.stderr,
        )
        return 2
    if bool(args.events) != bool(args.items):
        print("evaluate: --events and --items go together", file=sys.stderr)
        return 2
    try:
        if args.events:
            log = load_jsonl(Path(args.events), Path(args.items))
        else:
            dense = DENSE_ITEMS if args.dataset == "movielens-dense" else None
            log = load_movielens(Path(args.path) if args.path else MOVIELENS_SAMPLE, dense)
    except (OSError, ValueError) as exc:  # unreadable file, a line that is not JSON or not an item
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
    if args.max_users is not None:
        log = log.first_users(args.max_users)
    if not log.events:
        print("evaluate: no valid events to evaluate", file=sys.stderr)
        return 2
    opts = EvalOptions(
        protocol=args.protocol,
        ablations=not args.no_ablations,
        partitions=args.partitions,
        head_sync_events=args.head_sync_events,
        sasrec=not args.no_sasrec,
        sequence=not args.no_sequence,
        sasrec_budget_s=args.sasrec_budget,
        sasrec_epochs=args.sasrec_epochs,
        new_items=args.new_items,
    )
    # Its own embedding cache by default: a running worker holds the RocksDB lock of its state dir.
    state_dir = (
        args.state_dir or os.environ.get("INTEREST_STATE_DIR") or str(REPO_ROOT / ".state" / "evaluate")
    )
    core = build_core(dataclasses.replace(_settings(), state_dir=state_dir))
    command = "interest-stream evaluate " + " ".join(args.raw_argv)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        disable=args.quiet,
    ) as bar:  # fmt: skip
        tasks: dict[str, int] = {}

        def status(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        try:
            numbers = evaluate(log, core, Path(args.out), opts, status, command.strip())
        except ValueError as exc:
            print(f"evaluate: {exc}", file=sys.stderr)
            return 2
    core.encoder.close()
    out = Path(args.out)
    report = out / f"eval-{numbers['dataset']}.md"
    print(f"wrote {out / 'metrics.json'}, {report} and plots")
    for protocol, key in (("loo", "recall@10"), ("prequential", "acc@1")):
        for model, entry in numbers.get(protocol, {}).items():
            if ":" not in model:
                print(f"  {protocol:11s} {model:16s} {key} {entry[key][0]:.4f}")
    learn_rate = numbers["timings"].get("sequence_learned_events_per_s")
    if learn_rate:  # a time, so not in the report (which is the same for the same numbers)
        print(f"  the online sequential model learned {learn_rate:,.0f} events/s (wall time in learn())")
    return 0


def _ends_with_this_process() -> Callable[[], None] | None:
    """A ``preexec_fn`` for the demo's children: the kernel sends each SIGTERM when the demo's process
    ends, however it ends (Linux's ``prctl(PR_SET_PDEATHSIG)``; None elsewhere).

    Ctrl-C and a finished demo stop them in ``cmd_demo``'s ``finally``; a demo killed by SIGKILL runs no
    ``finally``, and its worker and trainer ran on, retrying a broker that the next demo stops, holding
    their embedding caches' locks: that next demo then failed ("the trainer exited with code 1"). The
    broker is left running (it outlives ``broker start`` by design); the next demo stops it first."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)  # looked up here: the child runs only the closure
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG, for the thread that starts the child: the main one
        if os.getppid() != parent:  # the demo died before the prctl: no signal will come
            os._exit(1)

    return preexec


def cmd_demo(args: argparse.Namespace) -> int:
    """Local broker + worker + trainer + MovieLens replay + live view: the whole product on one machine.

    The demo's broker is its own (``demo-broker`` beside the development broker's folder) and starts from
    empty topics every time: the development broker keeps its topics across restarts, as a real one does,
    so a demo on it would count the previous demo's updates as this one's and replay its events again.
    A worker or trainer that exits ends the demo with the end of their log instead of a view that waits.
    """
    from models import sources
    from streams.view import live_view

    Settings.load(dict(os.environ))  # a bad INTEREST_* value fails here, before anything starts
    broker = LocalBroker(_broker_dir().parent / "demo-broker")
    broker.stop()  # one an earlier demo kept (--keep-broker)
    t0 = time.monotonic()
    info = broker.start(fresh=True)
    print(f"broker up at {info.bootstrap} in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=info.bootstrap)
    env.setdefault("INTEREST_APP_ID", f"interest-demo-{int(time.time())}")
    env.setdefault("INTEREST_MODEL_SYNC_S", "10")  # recommendations show up within seconds of the start
    os.environ.update(env)
    state_dir = Path(env.get("INTEREST_STATE_DIR", REPO_ROOT / ".state" / "demo-worker"))
    # A fresh broker each demo: drop old table state, keep the embedding cache (saves re-encoding).
    shutil.rmtree(state_dir / "faust", ignore_errors=True)
    env["INTEREST_STATE_DIR"] = str(state_dir)
    log_path = state_dir.parent / "demo-worker.log"
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    exe = [sys.executable, "-m", "streams.cli"]
    trainer_env = dict(env, INTEREST_STATE_DIR=str(state_dir.parent / "demo-trainer"))
    (state_dir.parent / "demo-trainer" / "trainer-checkpoint.pt").unlink(missing_ok=True)  # a fresh broker
    why = None
    with_demo = _ends_with_this_process()
    with open(log_path, "wb") as log:
        out = {"stdout": log, "stderr": subprocess.STDOUT, "preexec_fn": with_demo}
        worker = subprocess.Popen([*exe, "worker"], env=env, **out)
        trainer = subprocess.Popen([*exe, "train", "--state-dir", trainer_env["INTEREST_STATE_DIR"]],
                                   env=trainer_env, **out)  # fmt: skip
        produce = [*exe, "produce", "--movielens", "--quiet"]
        if args.limit:
            produce += ["--limit", str(args.limit)]
        producer = subprocess.Popen(produce, env=env, **out)

        def failed() -> str | None:
            for name, proc in (("worker", worker), ("trainer", trainer)):
                if proc.poll() is not None:
                    return f"the {name} exited with code {proc.returncode}"
            if producer.poll():  # the producer ends when it has sent everything: only an error counts
                return f"the producer exited with code {producer.returncode}"
            return None

        expected = args.limit or sum(1 for _ in sources.movielens_events())
        port = env.get("INTEREST_WEB_PORT", "6066")
        where = f"http://localhost:{port}"
        print(f"worker log: {log_path}; live page: {where}/live; API: {where}/users/1/recommendations; "
              "Ctrl-C stops the demo", file=sys.stderr)  # fmt: skip
        try:
            final = live_view(_settings(), expected_events=expected,
                              stop=lambda s: s.events_applied >= expected,
                              abort=lambda: failed() is not None)  # fmt: skip
            if final.events_applied >= expected:
                print(f"all {final.events_applied} events applied for {len(final.users)} users "
                      f"in {time.monotonic() - final.started:.1f}s", file=sys.stderr)  # fmt: skip
            else:
                why = f"stopped after {final.events_applied} of {expected} events: {failed()}"
        except KeyboardInterrupt:
            pass
        finally:
            producer.terminate()
            trainer.send_signal(signal.SIGTERM)
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
            try:
                trainer.wait(60)
            except subprocess.TimeoutExpired:
                trainer.kill()
            if args.keep_broker:
                print(f"the demo's broker is still running at {info.bootstrap}; other commands find it "
                      f"with INTEREST_BROKER_DIR={broker.run_dir} (interest-stream tail, ... broker stop)",
                      file=sys.stderr)  # fmt: skip
            else:
                broker.stop()
    if why is not None:
        lines = log_path.read_text(errors="replace").splitlines()[-25:]
        print(f"demo {why}; the end of {log_path}:\n" + "\n".join(lines), file=sys.stderr)
        return 1
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    bench_file = REPO_ROOT / "benchmarks" / "bench.py"
    if not bench_file.exists():
        print("interest-stream bench runs from a clone of the repository (benchmarks/ is not installed)",
              file=sys.stderr)  # fmt: skip
        return 2
    sys.path.insert(0, str(REPO_ROOT))
    from benchmarks import bench

    sections = tuple(args.only.split(",")) if args.only else bench.SECTIONS
    unknown = set(sections) - set(bench.SECTIONS)
    if unknown:
        print(f"unknown sections {sorted(unknown)}; choose from {bench.SECTIONS}", file=sys.stderr)
        return 2
    bench.run(sections, quick=args.quick, out=Path(args.out) if args.out else bench.RESULTS)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="interest-stream",
        description="Live interest embeddings per user from click, cart and order events on Kafka.",
        epilog="Every command reads KAFKA_BOOTSTRAP_SERVERS (default: the broker `interest-stream broker "
        "start` runs) and the INTEREST_* settings (streams/settings.py). Start with `interest-stream demo`.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("broker", help="local development Kafka broker (KRaft, from Maven Central)")
    b.add_argument("action", choices=["start", "stop", "status"])
    b.add_argument("--port", type=int, default=None, help="PLAINTEXT port (default: a free one)")
    b.add_argument(
        "--fresh",
        action="store_true",
        help="wipe the broker's topics and offsets first (by default they are kept, as on a real broker)",
    )
    b.set_defaults(func=cmd_broker)

    w = sub.add_parser("worker", help="run a Faust worker")
    w.add_argument("--loglevel", "-l", default="info")
    w.add_argument("faust_args", nargs=argparse.REMAINDER, help="passed on to faust's worker command")
    w.set_defaults(func=cmd_worker)

    tr = sub.add_parser("train", help="train the sequential model from the topics; publish it to the workers")
    tr.add_argument("--loglevel", "-l", default="info")
    tr.add_argument("--state-dir", default=None,
                    help="checkpoint and caches (default: <state dir>/../trainer)")  # fmt: skip
    tr.set_defaults(func=cmd_train)

    for name, func, helptext in (
        ("produce", cmd_produce, "push a JSONL/CSV file or the MovieLens sample into the topics"),
        ("replay", cmd_replay, "run the core over a file without Kafka; print prequential metrics"),
    ):
        s = sub.add_parser(name, help=helptext)
        src = s.add_mutually_exclusive_group()
        src.add_argument("file", nargs="?", default=None, help="events as .jsonl or .csv")
        src.add_argument("--movielens", nargs="?", const="", default=None, metavar="DIR",
                         help="a MovieLens folder (default: the sample shipped in data/)")  # fmt: skip
        s.add_argument("--type", choices=["click", "cart", "order"], help="type for records without one")
        s.add_argument("--limit", type=int, default=None, help="stop after N events")
        s.add_argument("--max-users", type=int, default=None, help="MovieLens: only the first N users")
        s.add_argument("--quiet", action="store_true", help="no progress bar")
        s.add_argument("--rate", type=float, default=None, help="produce: max events per second")
        s.set_defaults(func=func)

    t = sub.add_parser("tail", help="print interest updates and dead letters")
    t.add_argument("--latest", action="store_true", help="only records produced from now on")
    t.add_argument("--json", action="store_true", help="raw JSON lines")
    t.add_argument("--idle-exit", type=float, default=None, metavar="S", help="exit after S idle seconds")
    t.set_defaults(func=cmd_tail)

    e = sub.add_parser("evaluate", help="replay a real log through the core: metrics, baselines, report")
    e.add_argument("--events", help="events JSONL (the event contract plus 'type')")
    e.add_argument("--items", help="items JSONL: item_id, title, text, categories")
    e.add_argument("--dataset", choices=["movielens", "movielens-dense"], default="movielens",
                   help="when no --events given (movielens-dense: the 1,500 most-rated movies)")  # fmt: skip
    e.add_argument("--path", default=None, help="the MovieLens folder (default: the sample in data/)")
    e.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results"), help="report folder")
    e.add_argument("--protocol", choices=["loo", "prequential", "both"], default="both")
    e.add_argument("--no-sasrec", action="store_true", help="skip the offline SASRec reference")
    e.add_argument("--sasrec-budget", type=float, default=1800.0, metavar="S",
                   help="SASRec's time cap, s, for the run that picks its epoch count (the refit on "
                        "training + validation then runs that many epochs)")  # fmt: skip
    e.add_argument("--sasrec-epochs", type=int, default=200, help="SASRec epoch cap")
    e.add_argument("--no-ablations", action="store_true", help="only the default model and the baselines")
    e.add_argument("--no-sequence", action="store_true", help="skip the online sequential model's rows")
    e.add_argument(
        "--partitions",
        type=int,
        default=4,
        help="also score the head as deployed: one replica per partition (0: skip)",
    )
    e.add_argument(
        "--head-sync-events",
        type=int,
        default=2560,
        metavar="N",
        help="deployed replicas fold each other in every N events",
    )
    e.add_argument(
        "--new-items",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="leave-one-out with this share of the catalogue as new items: their training events "
        "are not learned (item cold start); the report is eval-<dataset>-new-items<percent>",
    )
    e.add_argument("--max-users", type=int, default=None, help="only the first N users (quick runs)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.add_argument("--state-dir", default=None, help="embedding cache folder (default: .state/evaluate)")
    e.set_defaults(func=cmd_evaluate)

    bn = sub.add_parser("bench", help="encoder, core, worker-on-broker, stack ceiling and growth benchmarks "
                        "(~30 min)")  # fmt: skip
    bn.add_argument("--quick", action="store_true", help="smaller sizes (~8 min)")
    bn.add_argument("--only", default="",
                    help="comma-separated sections: encoder,core,pipeline,ceiling,growth")  # fmt: skip
    bn.add_argument("--out", default="", help="results folder (default benchmarks/results)")
    bn.set_defaults(func=cmd_bench)

    d = sub.add_parser("demo", help="broker + worker + MovieLens replay + live view")
    d.add_argument("--limit", type=int, default=None, help="replay only the first N ratings")
    d.add_argument("--keep-broker", action="store_true", help="leave the broker running afterwards")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(raw)
    args.raw_argv = raw[1:]
    from kafka.errors import KafkaTimeoutError  # here, not at the top: `--help` needs no Kafka client

    try:
        return args.func(args) or 0
    except BrokerError as exc:
        print(f"broker: {exc}", file=sys.stderr)
        return 2
    except SettingsError as exc:
        print(f"settings: {exc}", file=sys.stderr)
        return 2
    except (SourceError, FileNotFoundError) as exc:  # an input file or folder the user named
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 1
    except NothingListens as exc:
        print(f"{args.command}: nothing listens at the broker's address ({exc}); start the local one with "
              "`interest-stream broker start`, or set KAFKA_BOOTSTRAP_SERVERS", file=sys.stderr)  # fmt: skip
        return 2
    except KafkaTimeoutError as exc:
        if "bootstrap" not in str(exc):  # a broker that answered, then timed out: not a setup problem
            raise
        print(f"{args.command}: no Kafka broker answers at {_settings().broker}; start the local one with "
              "`interest-stream broker start`, or set KAFKA_BOOTSTRAP_SERVERS", file=sys.stderr)  # fmt: skip
        return 2


if __name__ == "__main__":
    sys.exit(main())
