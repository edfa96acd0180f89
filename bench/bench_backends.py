"""Speed of keras_lrp.explain per Keras backend (issue 20, item 6): one run per backend.

    python bench/bench_backends.py                                   # TensorFlow (the default)
    KERAS_BACKEND=jax JAX_ENABLE_X64=1 python bench/bench_backends.py
    KERAS_BACKEND=torch python bench/bench_backends.py
    ... --quick                                                       # one small setting
    ... --pin                                     # one core, one thread (a shared machine's load)

Prints, per configuration (the Bi-LSTM rows of bench_explain.py's table 1, float32, batch 256 unless
--batch): the model's compiled forward pass (``model.predict_on_batch``: ``tf.function`` / ``jax.jit``
/ eager torch, as Keras compiles it on the backend), keras_lrp's gradient x input (``method="gi"``,
compiled as explain is), ``LRP.attribute`` (numpy in, Explanation out), explain / forward and
explain / gradient x input. Each time is the median of --repeats interleaved calls after a warm-up
call (compilation excluded; it is printed separately for explain). --pin runs the process on one core
with one thread (bench/_timing.py ``pin_to_one_core``, before the backend starts): on a machine that
others share, multi-threaded torch and TensorFlow slow down erratically when their threads wait on each other.
"""
import argparse
import os
import sys
import time

from _timing import interleaved_medians, pin_to_one_core

PINNED = pin_to_one_core() if "--pin" in sys.argv[1:] else None   # before the backend starts

from keras_lrp.quiet import start_backend_quietly  # noqa: E402

BACKEND = start_backend_quietly()   # TensorFlow's start-up lines hidden; JAX with float64 available

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_lrp  # noqa: E402

CONFIGS = [(20, 60), (50, 60), (100, 60)]   # (T, units), 60 features
QUICK = [(20, 60)]


def bilstm(units: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((None, 60)), keras.layers.Bidirectional(keras.layers.LSTM(units)),
                             keras.layers.Dense(5)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small configuration")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--pin", action="store_true", help="one core, one thread (read before the backend starts)")
    args = parser.parse_args()
    threads = f"pinned to core {PINNED}, one thread" if PINNED is not None else f"{len(os.sched_getaffinity(0))} cores"
    print(f"backend {BACKEND}, Keras {keras.__version__}, batch {args.batch}, float32, median of {args.repeats}, "
          f"{threads}, load average {os.getloadavg()[0]:.1f}")
    print("| T | units | forward s | gradient x input s | explain s | explain / forward | explain / gradient x input "
          "| explain compile s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for steps, units in (QUICK if args.quick else CONFIGS):
        model = bilstm(units)
        x = np.random.default_rng(0).standard_normal((args.batch, steps, 60)).astype("float32")
        lrp = keras_lrp.LRP(model)
        gi = keras_lrp.Explainer(model, method="gi")
        t0 = time.perf_counter()
        lrp.attribute(x, batch_size=args.batch)
        compile_s = time.perf_counter() - t0
        forward, gradient, explain = interleaved_medians(
            [lambda: model.predict_on_batch(x), lambda: gi.attribute(x, batch_size=args.batch),
             lambda: lrp.attribute(x, batch_size=args.batch)], args.repeats)
        print(f"| {steps} | {units} | {forward:.4f} | {gradient:.4f} | {explain:.4f} | {explain / forward:.2f} "
              f"| {explain / gradient:.2f} | {compile_s:.1f} |")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
