"""Throughput beyond one explainer: several devices in one process, and the Ray Data engine.

    python bench/bench_scale.py                  # 2,000 sequences, T=20, Bidirectional(LSTM(60)) + Dense(5)
    python bench/bench_scale.py --quick          # 400 sequences, for a smoke run

Prints sequences/s of
* one process, :class:`keras_lrp.distributed.MultiDeviceExplainer` on 1 and on 2 logical CPU devices
  (median of --repeats calls after a warm-up call, interleaved);
* :func:`keras_lrp.distributed.explain_corpus` on a local Ray instance with 1 and 2 workers:
  end to end (wall time of the call: Ray actors start, import TensorFlow, load the model file and
  compile, then explain), and steady state (the shards after each worker's first one, over the
  time from the first of them starting to the last finishing).
The logical CPU devices share the machine's cores: on a 2-core machine they can only overlap the
explainer's sequential parts (the loop over time), not add arithmetic throughput.
"""
import argparse
import json
import os
import pathlib
import statistics
import tempfile
import time

from keras_lrp.quiet import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()     # TensorFlow's start-up lines hidden

import tensorflow as tf  # noqa: E402

# before TensorFlow initialises: two logical CPU devices on the one physical CPU
tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                           [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_lrp.distributed import MultiDeviceExplainer, explain_corpus  # noqa: E402


def model_and_corpus(n: int, T: int, features: int = 60, units: int = 60, classes: int = 5):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, features)), keras.layers.Bidirectional(keras.layers.LSTM(units)),
                              keras.layers.Dense(classes)])
    x = np.random.default_rng(0).standard_normal((n, T, features)).astype("float32")
    return model, x


def bench_devices(model, x, batch_size: int, repeats: int):
    """Median seconds of MultiDeviceExplainer.attribute on 1 and on 2 logical CPU devices."""
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    explainers = {k: MultiDeviceExplainer(model, devices=devices[:k]) for k in (1, 2)}
    for e in explainers.values():
        e.attribute(x, batch_size=batch_size)      # warm-up (tracing, one function per device)
    times = {k: [] for k in explainers}
    for _ in range(repeats):
        for k, e in explainers.items():
            t0 = time.perf_counter()
            e.attribute(x, batch_size=batch_size)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(ts) for k, ts in times.items()}


def steady_state(shards_dir: pathlib.Path):
    """(sequences, seconds) of the shards after each worker's first one (which includes compiling)."""
    records = [json.loads(p.read_text()) for p in shards_dir.glob("*.done.json")]
    firsts = {}
    for r in sorted(records, key=lambda r: r["started"]):
        firsts.setdefault(r["worker"], r["shard"])
    rest = [r for r in records if r["shard"] not in firsts.values()]
    if not rest:
        return 0, float("nan")
    return (sum(r["lines"] for r in rest),
            max(r["finished"] for r in rest) - min(r["started"] for r in rest))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="sequences (default 2000)")
    parser.add_argument("--T", type=int, default=20, help="timesteps (default 20)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="400 sequences, 2 repeats")
    args = parser.parse_args()
    if args.quick:
        args.n, args.repeats, args.shard_size = 400, 2, 100
    model, x = model_and_corpus(args.n, args.T)
    print(f"corpus: {args.n} sequences, T={args.T}, 60 features, Bidirectional(LSTM(60)) + Dense(5), float32, "
          f"batch {args.batch_size}; {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}")

    seconds = bench_devices(model, x, args.batch_size, args.repeats)
    for k, s in seconds.items():
        print(f"in process, {k} logical CPU device(s): {s:.3f} s  {args.n / s:8.0f} sequences/s")

    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="warning")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = pathlib.Path(tmp)
            model.save(tmp / "model.keras")
            np.save(tmp / "x.npy", x)
            for workers in (1, 2):
                result = explain_corpus(tmp / "model.keras", tmp / "x.npy", tmp / f"out{workers}",
                                        num_workers=workers, batch_size=args.batch_size,
                                        shard_size=args.shard_size, resume=False)
                n_steady, s_steady = steady_state(tmp / f"out{workers}" / "shards")
                print(f"Ray Data, {workers} worker(s): end to end {result.seconds:6.1f} s "
                      f"{args.n / result.seconds:8.0f} sequences/s; steady state {n_steady} sequences in "
                      f"{s_steady:.2f} s {n_steady / s_steady:8.0f} sequences/s")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
