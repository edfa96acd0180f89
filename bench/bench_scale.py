"""Throughput beyond one explainer: the Ray Data engine against the in-process explainer, stage by stage.

    python bench/bench_scale.py                  # 2,000 and 100,000 sequences, 2 interleaved repeats
    python bench/bench_scale.py --quick          # 400 and 4,000 sequences, 1 repeat, for a smoke run
    taskset -c 0 python bench/bench_scale.py     # everything (driver, Ray, workers) on one core
    cd OLD && PYTHONPATH=OLD python .../bench_scale.py --ray-only --workers 1
                                                 # the Ray runs of an older keras_lrp checkout OLD (run from
                                                 # there: Ray puts the driver's folder on the workers' path)

Corpus: T=20 timesteps of 60 features, Bidirectional(LSTM(60)) + Dense(5), float32, batch 256, as .npy.
Prints, each as the median and [min-max] of --repeats runs (interleaved, so that the machine's
other load spreads over all settings alike):

* steady state, sequences/s: in process (MultiDeviceExplainer on 1 and 2 logical CPU devices, the
  small corpus in memory; for the large one the explain stage of the in-process end-to-end run),
  and Ray Data with 1 and 2 workers: each worker's shards after its first one (which includes
  compiling), from the first of them starting to the last finishing, summed over the workers;
* end to end, seconds from a model file and a .npy corpus to ``out.jsonl``: in process (load the
  model, compile, explain, write the JSON lines) and :func:`keras_lrp.distributed.explain_corpus`
  with 1 and 2 workers on a running local Ray instance (Ray's own start, ``ray.init``, is printed
  once, as is the first Ray Data job of a session, which starts Ray Data's helper actors);
* the stages of the median large Ray run with 1 worker: the driver's (CorpusResult.timings), Ray
  Data's start until the worker exists, the worker's set-up, its per-shard stages summed (from the
  shards' completion records), and Ray's time between two shards of one worker;
* tokenise: ``keras-lrp explain --input corpus.txt --engine ray`` on generated sentences (the
  shipped SST-5 model), the CLI's tokenisation timed, against the local ``--json`` run.

The logical CPU devices share the machine's cores: on 2 cores they can only overlap the
explainer's sequential parts (the loop over time), not add arithmetic throughput.
"""
import argparse
import json
import os
import pathlib
import shutil
import statistics
import tempfile
import time
from typing import Dict, List, NamedTuple

from keras_lrp.quiet import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()     # TensorFlow's start-up lines hidden

import tensorflow as tf  # noqa: E402

# before TensorFlow initialises: two logical CPU devices on the one physical CPU
tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                           [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_lrp  # noqa: E402
from keras_lrp.distributed import MultiDeviceExplainer, explain_corpus  # noqa: E402
from keras_lrp.npy import load_npy  # noqa: E402
from keras_lrp.quiet import quiet_ray  # noqa: E402
from keras_lrp.safe_io import AtomicFile  # noqa: E402

WORKER_STAGES = ("read", "explain", "serialise", "hash", "write")


class RayRun(NamedTuple):
    """One explain_corpus call: wall seconds, the driver's stages and what the shards' records say."""

    seconds: float
    timings: Dict[str, float]
    steady: float                  # sequences/s after each worker's first shard, all workers
    to_worker: float               # call -> the first worker's __init__
    setup: Dict[str, float]        # the first worker's import / load / compile
    stages: Dict[str, float]       # per-shard stages, summed over all shards
    between: float                 # Ray's time between two shards of one worker, summed


def machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = "unknown CPU"
    cores = len(os.sched_getaffinity(0))
    return f"{name}, {cores} of {os.cpu_count()} CPU cores usable, load average {os.getloadavg()[0]:.1f}"


def model_and_corpus(n: int, T: int, features: int = 60, units: int = 60, classes: int = 5):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, features)), keras.layers.Bidirectional(keras.layers.LSTM(units)),
                              keras.layers.Dense(classes)])
    x = np.random.default_rng(0).standard_normal((n, T, features)).astype("float32")
    return model, x


def median_range(values: List[float], fmt: str = "{:,.0f}") -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def in_process_devices(model, x, batch_size: int) -> Dict[int, float]:
    """Sequences/s of MultiDeviceExplainer.attribute on 1 and on 2 logical CPU devices (one call each,
    after a warm-up call)."""
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    rates = {}
    for k in (1, 2):
        explainer = MultiDeviceExplainer(model, devices=devices[:k])
        explainer.attribute(x, batch_size=batch_size)      # warm-up (tracing, one function per device)
        began = time.perf_counter()
        explainer.attribute(x, batch_size=batch_size)
        rates[k] = len(x) / (time.perf_counter() - began)
    return rates


def in_process_end_to_end(model_path, x_path, out_path, batch_size: int, chunk: int) -> Dict[str, float]:
    """Seconds of the in-process path from files to out.jsonl (the lines explain_corpus writes):
    "compile" (load + compile), "explain", "write" (format and write), "total"."""
    from keras_lrp.corpus_io import ExplainedGroup, OutputWriter, shard_table

    began = time.perf_counter()
    explainer = keras_lrp.Explainer(keras_lrp.load_model(model_path))
    compiled = time.perf_counter()
    x = load_npy(x_path, mmap_mode="r")
    seconds = {"explain": 0.0, "write": 0.0}

    def tables():
        for start in range(0, len(x), chunk):
            t0 = time.perf_counter()
            e = explainer.attribute(np.asarray(x[start:start + chunk]), batch_size=batch_size)
            t1 = time.perf_counter()
            seconds["explain"] += t1 - t0
            yield shard_table(start, len(e.target), [ExplainedGroup(np.arange(len(e.target)), e)], False)
            seconds["write"] += time.perf_counter() - t1      # the lines of this chunk, written

    with AtomicFile(out_path, durable=True) as out:
        OutputWriter(out.open("wb"), "jsonl").write_all(tables())
    return {"compile": compiled - began, **seconds, "total": time.perf_counter() - began}


def ray_end_to_end(model_path, x_path, out_dir, workers: int, batch_size: int, shard_size: int) -> RayRun:
    began = time.time()
    result = explain_corpus(model_path, x_path, out_dir, num_workers=workers, batch_size=batch_size,
                            shard_size=shard_size, resume=False)
    records = [json.loads(p.read_text()) for p in (pathlib.Path(out_dir) / "shards").glob("*.done.json")]
    by_worker: Dict[str, List[dict]] = {}
    for r in sorted(records, key=lambda r: r["started"]):
        by_worker.setdefault(r["worker"], []).append(r)
    rest = [r for shards in by_worker.values() for r in shards[1:]]
    steady = (sum(r["lines"] for r in rest) / (max(r["finished"] for r in rest) - min(r["started"] for r in rest))
              if rest else float("nan"))
    between = sum(b["started"] - a["finished"] for shards in by_worker.values() for a, b in zip(shards, shards[1:]))
    if "worker_created" not in records[0]:      # keras_lrp before issue 23: no stage timings
        return RayRun(result.seconds, {}, steady, float("nan"), {}, {}, between)
    first = min(records, key=lambda r: r["worker_created"])
    return RayRun(result.seconds, result.timings, steady, first["worker_created"] - began, first["worker_setup"],
                  {k: sum(r["seconds"][k] for r in records) for k in WORKER_STAGES}, between)


def text_corpus(tmp: pathlib.Path, n: int, workers: int) -> str:
    """The CLI on ``n`` generated sentences: local --json against --engine ray, and its tokenisation."""
    from keras_lrp.cli import explain as cli_explain
    from keras_lrp.cli import main
    from keras_lrp.sst.pretrained import load_pretrained

    words = load_pretrained("sst5").vocabulary.tokens
    rng = np.random.default_rng(1)
    (tmp / "sentences.txt").write_text("".join(
        " ".join(words[i] for i in rng.integers(0, len(words), int(rng.integers(5, 30)))) + "\n" for _ in range(n)))
    tokenise = [0.0]
    encode = cli_explain.encode_sentence

    def timed_encode(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return encode(*args, **kwargs)
        finally:
            tokenise[0] += time.perf_counter() - t0

    cli_explain.encode_sentence = timed_encode
    try:
        t0 = time.perf_counter()
        assert main(["explain", "--input", str(tmp / "sentences.txt"), "--json", str(tmp / "local.jsonl"),
                     "--quiet"]) == 0
        local = time.perf_counter() - t0
        tokenise[0] = 0.0
        t0 = time.perf_counter()
        assert main(["explain", "--input", str(tmp / "sentences.txt"), "--engine", "ray", "--workers", str(workers),
                     "--out-dir", str(tmp / "text-run"), "--quiet"]) == 0
        ray_seconds = time.perf_counter() - t0
    finally:
        cli_explain.encode_sentence = encode
    return (f"text corpus through the CLI ({n:,} generated sentences, shipped SST-5 model): local --json "
            f"{local:.1f} s; --engine ray, {workers} worker(s) {ray_seconds:.1f} s, of which tokenise "
            f"{tokenise[0]:.2f} s ({n / tokenise[0]:,.0f} sentences/s, in the driver before Ray starts)")


def run_all(args, sizes, tmp: pathlib.Path, model, small, around_init):
    """Every measurement, interleaved over ``args.repeats``; returns (steady, ends, ray_runs, in_process_runs)."""
    import ray

    t0 = time.perf_counter()
    with around_init():
        ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, log_to_driver=False,
                 logging_level="error")
    print(f"Ray {ray.__version__}: ray.init {time.perf_counter() - t0:.1f} s; ", end="", flush=True)
    np.save(tmp / "tiny.npy", small[:8])
    first = explain_corpus(tmp / "model.keras", tmp / "tiny.npy", tmp / "first", shard_size=8)
    print(f"the session's first Ray Data job (8 sequences) {first.seconds:.1f} s")

    steady: Dict[str, List[float]] = {}
    ends: Dict[str, List[float]] = {}
    ray_runs: Dict[str, List[RayRun]] = {}
    in_process_runs: List[Dict[str, float]] = []
    try:
        for repeat in range(args.repeats):
            for k, rate in in_process_devices(model, small, args.batch_size).items():
                steady.setdefault(f"in process, {k} logical CPU device(s)|small", []).append(rate)
            for name, (n, shard_size) in sizes.items():
                if not args.ray_only:
                    e = in_process_end_to_end(tmp / "model.keras", tmp / f"{name}.npy", tmp / "in-process.jsonl",
                                              args.batch_size, shard_size)
                    ends.setdefault(f"in process|{name}", []).append(e["total"])
                    if name == "large":
                        steady.setdefault("in process, 1 logical CPU device(s)|large", []).append(n / e["explain"])
                        in_process_runs.append(e)
                for workers in args.workers:
                    run = ray_end_to_end(tmp / "model.keras", tmp / f"{name}.npy", tmp / f"ray{workers}", workers,
                                         args.batch_size, shard_size)
                    key = f"Ray Data, {workers} worker(s)"
                    steady.setdefault(f"{key}|{name}", []).append(run.steady)
                    ends.setdefault(f"{key}|{name}", []).append(run.seconds)
                    ray_runs.setdefault(f"{workers}|{name}", []).append(run)
            print(f"  repeat {repeat + 1} of {args.repeats} done, load average {os.getloadavg()[0]:.1f}", flush=True)
        if not args.ray_only:
            print(text_corpus(tmp, args.small, 1))
    finally:
        ray.shutdown()
    return steady, ends, ray_runs, in_process_runs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=2000, help="sequences of the small corpus (default 2,000)")
    parser.add_argument("--large", type=int, default=100_000, help="sequences of the large corpus (default 100,000)")
    parser.add_argument("--T", type=int, default=20, help="timesteps (default 20)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats (default 2)")
    parser.add_argument("--quick", action="store_true", help="400 and 4,000 sequences, 1 repeat")
    parser.add_argument("--workers", type=lambda text: [int(k) for k in text.split(",")], default=[1, 2],
                        help="Ray worker counts, comma-separated (default 1,2)")
    parser.add_argument("--ray-only", action="store_true",
                        help="only the Ray runs and the in-process steady state (runs against keras_lrp before "
                             "issue 23: PYTHONPATH=<old checkout>)")
    args = parser.parse_args()
    if args.quick:
        args.small, args.large, args.repeats = 400, 4000, 1
    # shards: a multiple of the batch (as the default 4,096 is), at least 8 per corpus, at most 4,096 sequences
    def shard_size(n: int) -> int:
        return min(4096, max(args.batch_size, n // 8 // args.batch_size * args.batch_size))

    sizes = {"small": (args.small, shard_size(args.small)), "large": (args.large, shard_size(args.large))}
    print(f"machine: {machine()}")
    print(f"corpus: T={args.T}, 60 features, Bidirectional(LSTM(60)) + Dense(5), float32, batch {args.batch_size}; "
          + "; ".join(f"{name} {n:,} sequences in shards of {s:,}" for name, (n, s) in sizes.items()))

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench_scale_"))
    model, x = model_and_corpus(args.large, args.T)
    model.save(tmp / "model.keras")
    for name, (n, _) in sizes.items():
        np.save(tmp / f"{name}.npy", x[:n])
    small = x[:args.small].copy()
    del x

    try:
        with quiet_ray() as around_init:   # Ray's own log lines hidden, as explain_corpus hides them
            steady, ends, ray_runs, in_process_runs = run_all(args, sizes, tmp, model, small, around_init)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    n_small, n_large = args.small, args.large
    print(f"\nsteady state, sequences/s (median [min-max] of {args.repeats}):")
    print(f"| setting | {n_small:,} sequences | {n_large:,} sequences | / in process (1 device), same cores |")
    print("| --- | --- | --- | --- |")
    # the in-process explain rate of the large corpus (its end-to-end run's explain stage); with
    # --ray-only the small corpus's (the same model and T, in memory)
    base = {size: statistics.median(steady.get(f"in process, 1 logical CPU device(s)|{size}")
                                    or steady["in process, 1 logical CPU device(s)|small"])
            for size in ("small", "large")}
    for setting in ("in process, 1 logical CPU device(s)", "in process, 2 logical CPU device(s)",
                    *(f"Ray Data, {k} worker(s)" for k in args.workers)):
        cells = [median_range(steady.get(f"{setting}|{size}", [])) for size in ("small", "large")]
        ratio = "—"
        if setting.startswith("Ray"):    # every worker and the in-process explainer use all the cores
            ratio = " / ".join(f"{statistics.median(steady[f'{setting}|{size}']) / base[size]:.2f}"
                               for size in ("small", "large"))
        print(f"| {setting} | {cells[0]} | {cells[1]} | {ratio} |")

    print(f"\nend to end, seconds from model file + .npy to out.jsonl (median [min-max] of {args.repeats}):")
    print(f"| setting | {n_small:,} sequences | {n_large:,} sequences | / in process |")
    print("| --- | --- | --- | --- |")
    median = {key: statistics.median(values) for key, values in ends.items()}
    for setting in ("in process", *(f"Ray Data, {k} worker(s)" for k in args.workers)):
        if args.ray_only and setting == "in process":
            continue
        cells = [median_range(ends[f"{setting}|{size}"], "{:.1f}") for size in ("small", "large")]
        ratio = "—" if args.ray_only else " / ".join(f"{median[f'{setting}|{s}'] / median[f'in process|{s}']:.2f}"
                                                     for s in ("small", "large"))
        print(f"| {setting} | {cells[0]} | {cells[1]} | {ratio} |")
    between = ", ".join(f"{w} worker(s) {statistics.median(r.between for r in ray_runs[f'{w}|large']):.2f} s"
                        for w in args.workers)
    print(f"Ray's time between two shards of a worker, summed over the workers: {between}")
    if not args.ray_only:
        print_stages(args, ray_runs, in_process_runs)


def print_stages(args, ray_runs, in_process_runs):
    n_large = args.large
    runs = sorted(ray_runs["1|large"], key=lambda r: r.seconds)
    run = runs[len(runs) // 2]
    e = sorted(in_process_runs, key=lambda r: r["total"])[len(in_process_runs) // 2]
    print(f"\nstages, {n_large:,} sequences, seconds (the median run of each):")
    print("| stage | in process | Ray Data, 1 worker |")
    print("| --- | --- | --- |")
    t = run.timings
    rows = [
        ("driver: load the model, compile, validate the corpus", f"{e['compile']:.2f}", f"{t['check']:.2f}"),
        ("driver: SHA-256 of model and inputs", "—", f"{t['hash']:.2f}"),
        ("Ray Data start until the worker exists", "—", f"{run.to_worker - t['check'] - t['hash']:.2f}"),
        ("worker: import TensorFlow + keras_lrp", "—", f"{run.setup['import']:.2f}"),
        ("worker: load the model, compile", "—", f"{run.setup['load'] + run.setup['compile']:.2f}"),
        ("read the corpus", "(in explain)", f"{run.stages['read']:.2f}"),
        ("explain", f"{e['explain']:.2f}", f"{run.stages['explain']:.2f}"),
        ("serialise (Arrow table)", "(in write)", f"{run.stages['serialise']:.2f}"),
        ("hash (SHA-256 of each shard)", "—", f"{run.stages['hash']:.2f}"),
        ("write the shard files", "—", f"{run.stages['write']:.2f}"),
        ("Ray between two shards (task dispatch, Arrow blocks of the shard descriptions)", "—",
         f"{run.between:.2f}"),
        ("format + write out.jsonl", f"{e['write']:.2f}",
         f"{t['merge']:.2f} after the last shard (the rest alongside the worker)"),
        ("total", f"{e['total']:.2f}", f"{run.seconds:.2f}"),
    ]
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
