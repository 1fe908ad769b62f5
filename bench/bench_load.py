"""Load: N sessions classifying zips at once against one process, for a minute.

Each session is a thread (as Streamlit runs them) that classifies its own zip again and again with
the shared ``load_classifier()`` model and one Store, checking each answer (every cell classified,
analysis stored ``done``). Prints throughput, p50/p95 latency and errors (which must be zero), and
the throughput of N sessions relative to one session measured in the same run.

    python bench/bench_load.py                       # 8 sessions, 60 s, shipped model (or a tiny one)
    python bench/bench_load.py --sessions 4 --duration 20 --database-url mysql+pymysql://...
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bloodcells.settings import apply_offline_environment  # noqa: E402

apply_offline_environment()

CODES = ("LYT", "EOS", "NGB", "NGS")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8, help="concurrent sessions (threads)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load with all sessions")
    parser.add_argument("--baseline", type=float, default=None,
                        help="seconds with one session first, for the ratio (default: a quarter of --duration)")
    parser.add_argument("--cells", type=int, default=24, help="cells per zip")
    parser.add_argument("--models", help="classifier folder (default: the shipped one, else a tiny one trained now)")
    parser.add_argument("--database-url", help="database (default: a fresh SQLite file in a temporary folder)")
    return parser.parse_args()


def _classifier_dir(requested: str | None, scratch: Path) -> tuple[Path, str]:
    from bloodcells.classify import default_models_dir

    if requested:
        return Path(requested), "given"
    shipped = default_models_dir()
    if (shipped / "classifier.json").is_file():
        return shipped, "shipped"
    from bloodcells.synthetic import write_cell_folders
    from bloodcells.train import TrainConfig, train_tree

    write_cell_folders(scratch / "cells", {code: 40 for code in CODES}, size=32)
    config = TrainConfig(architecture="test_efficientnet", input_size=32, mode="scratch", cross_site=False,
                         stain_norm=False, epochs=2, per_class=32, batch_size=16, patience=2)
    train_tree([scratch / "cells"], scratch / "models", config=config, log=lambda _text: None)
    return scratch / "models", "tiny (test_efficientnet, 32 px, trained on generated cells just now)"


def _session_zip(path: Path, session: int, cells: int) -> Path:
    from bloodcells.synthetic import cell_image, encode

    with zipfile.ZipFile(path, "w") as archive:
        for n in range(cells):
            code = CODES[(n + session) % len(CODES)]
            archive.writestr(f"{code}_{session}_{n:04d}.png", encode(cell_image(code, 10_000 * session + n, 64)))
    return path


def _run(sessions: int, seconds: float, zips: list[Path], cells: int, models_dir: Path, store) -> dict:
    from bloodcells.classify import classify, load_classifier

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(sessions + 1)
    deadline = [0.0]

    def session(k: int) -> None:
        classifier = load_classifier(models_dir)
        start.wait()
        done = 0
        while done == 0 or time.perf_counter() < deadline[0]:  # at least one analysis each
            done += 1
            began = time.perf_counter()
            try:
                outcome = classify(zips[k], classifier=classifier, store=store, name=f"load-{k}.zip")
                analysis = store.get_analysis(outcome.analysis_id)
                if len(outcome.rows) != cells or analysis.status != "done" or len(analysis.predictions) != cells:
                    raise AssertionError(f"session {k}: {len(outcome.rows)} rows, analysis {analysis.status} "
                                         f"with {len(analysis.predictions)} predictions; expected {cells}")
            except Exception as error:  # counted and shown: the figure that must be zero
                with lock:
                    errors.append(f"{type(error).__name__}: {error}")
                continue
            with lock:
                latencies.append(time.perf_counter() - began)

    threads = [threading.Thread(target=session, args=(k,)) for k in range(sessions)]
    for thread in threads:
        thread.start()
    deadline[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    ordered = sorted(latencies)

    def percentile(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(p * (len(ordered) - 1))))] if ordered else float("nan")

    return {"sessions": sessions, "seconds": elapsed, "analyses": len(latencies), "errors": errors,
            "per_second": len(latencies) / elapsed, "cells_per_second": len(latencies) * cells / elapsed,
            "p50": percentile(0.50), "p95": percentile(0.95), "max": ordered[-1] if ordered else float("nan"),
            "mean": statistics.fmean(ordered) if ordered else float("nan")}


def _report(result: dict) -> None:
    print(f"  {result['sessions']} session(s), {result['seconds']:.1f} s: {result['analyses']} analyses, "
          f"{result['per_second']:.2f} analyses/s = {result['cells_per_second']:.1f} cells/s; latency "
          f"p50 {result['p50']:.2f} s, p95 {result['p95']:.2f} s, max {result['max']:.2f} s; "
          f"errors {len(result['errors'])}")
    for error in result["errors"][:5]:
        print(f"    error: {error}")


def main() -> int:
    import torch

    from bloodcells.classify import load_classifier
    from bloodcells.store import open_store
    from bloodcells.taxonomy import default_tree

    args = _arguments()
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        models_dir, which = _classifier_dir(args.models, scratch)
        store = open_store(args.database_url or f"sqlite:///{scratch / 'load.db'}")
        store.sync_cell_types(default_tree())
        zips = [_session_zip(scratch / f"load-{k}.zip", k, args.cells) for k in range(args.sessions)]
        classifier = load_classifier(models_dir)
        print(f"bench_load: model {which}: {models_dir} ({', '.join(sorted(classifier.nodes))}); "
              f"database {store.display_url}; {args.cells} cells (64 px) per zip; "
              f"torch threads {torch.get_num_threads()}")
        _run(1, 0.0, zips, args.cells, models_dir, store)  # warm-up: one analysis, not measured
        baseline = _run(1, args.baseline if args.baseline is not None else args.duration / 4,
                        zips, args.cells, models_dir, store)
        _report(baseline)
        loaded = _run(args.sessions, args.duration, zips, args.cells, models_dir, store)
        _report(loaded)
        ratio = loaded["per_second"] / baseline["per_second"] if baseline["per_second"] else float("nan")
        print(f"  throughput with {args.sessions} sessions / with 1 session: {ratio:.2f}x; "
              f"p50 latency ratio {loaded['p50'] / baseline['p50']:.2f}x")
        store.engine.dispose()
    errors = len(baseline["errors"]) + len(loaded["errors"])
    print(f"bench_load: {'OK' if errors == 0 else 'FAILED'}: {errors} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
