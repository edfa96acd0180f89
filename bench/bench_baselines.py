"""Cost of the baselines (IG, occlusion, Shapley sampling) against LRP and gradient x input, same model,
same process: the shipped-size SST model (Bidirectional(LSTM(60)) on 60-dim vectors -> Dense(5)).

    python bench/bench_baselines.py                 # batch 64, T = 20, 5 repeats
    python bench/bench_baselines.py --steps 20 --batch 16 --repeats 3
    taskset -c 0 python bench/bench_baselines.py --methods shapley --cpu     # Shapley only, CPU time

Prints, per method, the median wall time (``--cpu``: this process's CPU time, which leaves out the waits
of a machine loaded by other jobs) of ``Explainer.attribute`` (numpy in, Explanation out, after
a warm-up call that compiles), ms per sentence, the ratio to LRP, and the largest |convergence_delta|
relative to the explained score (IG's completeness gap, Shapley's efficiency gap).
"""
import argparse
import os
import statistics
import time

from keras_lrp.quiet import import_tensorflow_quietly

import_tensorflow_quietly()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_lrp  # noqa: E402

METHODS = [("lrp", None), ("gi", None), ("ig", {"steps": 32}), ("occlusion", {"window": 1}),
           ("shapley", {"samples": 8}), ("shapley", {"samples": 32})]


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="time steps (words) per sentence")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--methods", default=",".join(dict(METHODS)),
                   help="comma-separated methods to time (default all); LRP is always timed, as the ratio's base")
    p.add_argument("--cpu", action="store_true", help="time in process CPU time, not wall time")
    args = p.parse_args(argv)
    clock = time.process_time if args.cpu else time.perf_counter
    chosen = {"lrp", *args.methods.split(",")}
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, 60)), keras.layers.Bidirectional(keras.layers.LSTM(60)),
                              keras.layers.Dense(5, use_bias=False)])
    x = np.random.default_rng(0).standard_normal((args.batch, args.steps, 60)).astype("float32")
    print(f"batch {args.batch}, T = {args.steps}, Bi-LSTM(60), float32, median of {args.repeats}, "
          f"{'process CPU' if args.cpu else 'wall'} time, load average {os.getloadavg()[0]:.1f}")
    base = None
    for method, options in [m for m in METHODS if m[0] in chosen]:
        ex = keras_lrp.Explainer(model, method=method, method_options=options)
        e = ex.attribute(x)
        times = []
        for _ in range(args.repeats):
            t0 = clock()
            ex.attribute(x)
            times.append(clock() - t0)
        t = statistics.median(times)
        base = base or t
        gap = np.abs(e.convergence_delta).max() / np.abs(e.explained_score).max()
        name = method + ("" if not options else " " + ", ".join(f"{k}={v}" for k, v in options.items()))
        print(f"{name:22s} {1000 * t:9.1f} ms  {1000 * t / args.batch:7.2f} ms/sentence  {t / base:6.1f} x LRP"
              + (f"  |delta|/|score| {gap:.1e}" if method in ("ig", "shapley") else ""))


if __name__ == "__main__":
    main()
