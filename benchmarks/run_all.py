"""Runs every benchmark and writes one JSON and one markdown table of their summary rows: benchmark, our
time, the reference's, their ratio (reference / ours), the fraction of the machine's rate for the
benchmark's dominant primitive (`common.py`), the machine, and the load average at the start and the end of
each benchmark.

Before each benchmark the machine is left to settle until the 1-minute load average is below half the
cores (at most `SETTLE_S`): what remains of the previous benchmark, or of other work, has then decayed.  A
ratio measured on a loaded machine is not reported as a figure (the table prints it in parentheses with a
warning and the JSON moves it to ``ratio_loaded``; ``ratio`` is null), because on an oversubscribed machine
the two sides are slowed unequally (PyTorch's spinning thread pool suffers more than XLA's).  Loaded means:
the load average was still at least half the cores when the benchmark started (other work), or exceeded the
cores by more than one at its end (more than the benchmark's own threads, which raise it to about the core
count by themselves).

Small settings by default (a few minutes in all: a check that every benchmark runs); ``--full`` runs the
settings of the README's figures.  Benchmarks that need a trained work directory or the MNIST files run only
when given them (``--relu-checkpoint``, ``--mwd-checkpoint``, ``--data-dir``); the others use random weights
and inputs.  Each benchmark runs in its own process, one after the other.

    python benchmarks/run_all.py [--full] [--out DIR] [--only attacks,mwd] [--data-dir DIR]
        [--relu-checkpoint WORKDIR] [--mwd-checkpoint WORKDIR]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time
from typing import NamedTuple

sys.path.insert(0, os.path.dirname(__file__))

from common import machine  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent


class Benchmark(NamedTuple):
    """A script, its small and full arguments, and what it needs (``data``, ``relu``, ``mwd``): without a
    need it is skipped; ``optional`` needs only add arguments when given."""

    script: str
    small: tuple[str, ...]
    full: tuple[str, ...]
    needs: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()


BENCHMARKS = {
    "train": Benchmark("bench_train.py", ("--steps", "20", "--rounds", "3"), ("--steps", "100", "--rounds", "5")),
    "attacks": Benchmark("bench_attacks.py", ("--n", "200", "--steps", "10", "--restarts", "2", "--rounds", "3"),
                         ("--n", "1000", "--steps", "40", "--restarts", "10", "--rounds", "3"),
                         optional=("relu", "data")),
    "mwd": Benchmark("bench_mwd.py", ("--steps", "3", "--warmup", "1"), ("--steps", "7", "--warmup", "2")),
    "bounds": Benchmark("bench_bounds.py", ("--n", "1000", "--eps", "0.05:0.1:0.05"), ("--n", "10000",),
                        optional=("mwd", "data")),
    "scramble": Benchmark("bench_scramble.py", ("--repeats", "3"), ("--repeats", "10")),
    "local": Benchmark("bench_local.py", ("--steps", "20", "--rounds", "2"), ("--steps", "600", "--rounds", "3"),
                       needs=("data",)),
    "carso": Benchmark("bench_carso.py", ("--images", "20", "--draws", "50", "--draws-per-chunk", "50",
                                          "--examples-per-chunk", "20", "--rounds", "2"), ("--rounds", "3")),
    "fab": Benchmark("bench_fab.py", ("--n", "20", "--steps", "10", "--rounds", "1"), ("--n", "200", "--rounds", "3"),
                     optional=("relu", "data")),
    "compaction": Benchmark("bench_compaction.py", ("--n", "50", "--attacks", "square,pgd[psd]"), ("--n", "250",),
                            needs=("mwd",), optional=("data",)),
}
OPTION_OF = {"data": "--data-dir", "relu": "--checkpoint", "mwd": "--checkpoint"}


def arguments(benchmark: Benchmark, full: bool, given: dict[str, str | None]) -> list[str] | None:
    """The script's arguments, or None when something it needs was not given."""
    if any(not given[need] for need in benchmark.needs):
        return None
    extra = []
    for need in (*benchmark.needs, *benchmark.optional):
        if given[need]:
            extra += [OPTION_OF[need], given[need]]
    return [*(benchmark.full if full else benchmark.small), *extra]


SETTLE_S = 240  # the longest wait for the load average to settle before a benchmark


def settle(cores: int, limit_s: float = SETTLE_S, poll_s: float = 5.0) -> float:
    """Waits until the 1-minute load average is below ``cores / 2`` (at most ``limit_s``); returns it."""
    deadline = time.monotonic() + limit_s
    while os.getloadavg()[0] >= cores / 2 and time.monotonic() < deadline:
        time.sleep(poll_s)
    return os.getloadavg()[0]


def loaded(load_averages: list[float], cores: int) -> bool:
    """Whether the machine was busy with other work: a 1-minute load average of at least half the cores at
    the start, or above the cores plus one at the end (a benchmark's own threads bring it to about the
    core count)."""
    start, end = load_averages
    return start >= cores / 2 or end > cores + 1


def run_one(name: str, benchmark: Benchmark, args: list[str], out: pathlib.Path) -> dict:
    """Runs one benchmark in its own process; its summary rows with the load averages around it."""
    json_path, log_path = out / f"{name}.json", out / f"{name}.log"
    start_load, started = os.getloadavg()[0], time.perf_counter()
    with log_path.open("w") as log:
        process = subprocess.run([sys.executable, str(HERE / benchmark.script), *args, "--json", str(json_path)],
                                 stdout=log, stderr=subprocess.STDOUT, cwd=HERE.parent)
    end_load, seconds = os.getloadavg()[0], time.perf_counter() - started
    if process.returncode or not json_path.exists():
        return {"benchmark": name, "error": f"exit status {process.returncode}; see {log_path}",
                "load_average": [start_load, end_load], "wall_s": seconds}
    figures = json.loads(json_path.read_text())
    return {"benchmark": name, "rows": figures.get("summary", []), "load_average": [start_load, end_load],
            "wall_s": seconds, "command": " ".join(["python", f"benchmarks/{benchmark.script}", *args])}


def judged(rows: list[dict], load_average: list[float], cores: int) -> list[dict]:
    """The rows with ``ratio`` withheld (moved to ``ratio_loaded``, with a warning) if the machine was loaded."""
    if not loaded(load_average, cores):
        return rows
    warning = (f"load average {load_average[0]:.1f} at the start, {load_average[1]:.1f} at the end on {cores} cores: "
               "ratio not reported")
    return [{**row, "ratio": None, "ratio_loaded": row.get("ratio"), "warning": warning} for row in rows]


def markdown(results: list[dict], info: dict, full: bool) -> str:
    """The table of every summary row."""
    lines = [f"Benchmarks ({'full' if full else 'small'} settings) on {info['processor']}, {info['cpu_count']} "
             f"cores, backend {info['backend']}.", "",
             "| benchmark | ours | reference | ratio | fraction of peak | load average (start, end) |",
             "|---|---|---|---|---|---|"]

    def number(value, unit="", digits=3):
        return "n/a" if value is None else f"{value:.{digits}g}{unit}"

    for result in results:
        load = f"{result['load_average'][0]:.1f}, {result['load_average'][1]:.1f}"
        if "error" in result:
            lines.append(f"| {result['benchmark']} | failed: {result['error']} | | | | {load} |")
            continue
        for row in result["rows"]:
            ratio = number(row.get("ratio"), "x")
            if row.get("ratio_loaded") is not None:
                ratio = f"({number(row['ratio_loaded'], 'x')}, loaded: not a figure)"
            reference = ("none" if row["reference_s"] is None
                         else f"{row['reference']}: {number(row['reference_s'], ' s')}")
            fraction = ("n/a" if row["fraction_of_peak"] is None else
                        f"{number(row['fraction_of_peak'], digits=2)} of {row['primitive']}")
            lines.append(f"| {row['benchmark']} | {number(row['ours_s'], ' s')} | {reference} | {ratio} | "
                         f"{fraction} | {load} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the settings of the README's figures")
    parser.add_argument("--out", default="benchmark_results", help="directory for the JSON, table and logs")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {sorted(BENCHMARKS)}")
    parser.add_argument("--data-dir", default=None, help="directory with the MNIST IDX files")
    parser.add_argument("--relu-checkpoint", default=None, help="trained ReLU mlp work directory (bench_attacks)")
    parser.add_argument("--mwd-checkpoint", default=None, help="trained mwd_mnist work directory (bounds, compaction)")
    args = parser.parse_args(argv)
    names = list(BENCHMARKS) if args.only is None else args.only.split(",")
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {sorted(BENCHMARKS)}")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    given = {"data": args.data_dir, "relu": args.relu_checkpoint, "mwd": args.mwd_checkpoint}
    info, cores = machine(), os.cpu_count() or 1

    results = []
    for name in names:
        script_args = arguments(BENCHMARKS[name], args.full, given)
        if script_args is None:
            print(f"{name}: skipped (needs {', '.join(OPTION_OF[n] for n in BENCHMARKS[name].needs)})")
            continue
        print(f"{name}: running (load average {settle(cores):.1f})", flush=True)
        result = run_one(name, BENCHMARKS[name], script_args, out)
        if "rows" in result:
            result["rows"] = judged(result["rows"], result["load_average"], cores)
        results.append(result)
        for row in result.get("rows", []):
            if row.get("ratio_loaded") is not None:
                print(f"  WARNING {row['benchmark']}: ratio {row['ratio_loaded']:.3g}x measured under "
                      f"{row['warning']}")
        print(f"  {result.get('error', 'done')} in {result['wall_s']:.0f} s, load average "
              f"{result['load_average'][0]:.1f} -> {result['load_average'][1]:.1f}")
    (out / "benchmarks.json").write_text(json.dumps({"machine": info, "full": args.full, "results": results},
                                                    indent=2) + "\n")
    table = markdown(results, info, args.full)
    (out / "benchmarks.md").write_text(table)
    print(table)
    return results


if __name__ == "__main__":
    main()
