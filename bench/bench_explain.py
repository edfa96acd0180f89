"""Speed of keras_lrp.explain relative to the model's own compiled forward pass, same process.

    python bench/bench_explain.py            # the README table
    python bench/bench_explain.py --quick    # one small setting

Prints, per setting: forward time (tf.function(model)), explain time, their ratio (target <= 3x),
and sequences/s. Every timing is the median of several repeats after a warm-up call.
"""
import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_lrp  # noqa: E402


def median_time(fn, repeats):
    fn()  # warm-up (tracing)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(T, units, batch=256, features=60, classes=5, repeats=5, dtype="float32"):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, features)),
                              keras.layers.Bidirectional(keras.layers.LSTM(units)),
                              keras.layers.Dense(classes, use_bias=False)])
    x = np.random.default_rng(0).standard_normal((batch, T, features)).astype("float32")
    forward = tf.function(model)
    xt = tf.constant(x)
    t_fwd = median_time(lambda: forward(xt).numpy(), repeats)
    explainer = keras_lrp.LRP(model, dtype=dtype)
    t_lrp = median_time(lambda: explainer.attribute(x, batch_size=batch), repeats)
    return t_fwd, t_lrp


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one small setting only")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    settings = [(20, 60)] if args.quick else [(20, 60), (50, 60), (100, 60), (100, 256)]
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, {os.cpu_count()} CPUs; "
          "Bidirectional(LSTM(units)) + Dense(5), batch 256, 60 features, float32")
    print(f"{'T':>4} {'units':>5} {'forward s':>10} {'explain s':>10} {'ratio':>6} {'explain seq/s':>14}")
    for T, units in settings:
        t_fwd, t_lrp = bench(T, units, repeats=args.repeats)
        print(f"{T:>4} {units:>5} {t_fwd:>10.4f} {t_lrp:>10.4f} {t_lrp / t_fwd:>6.2f} {256 / t_lrp:>14.0f}")


if __name__ == "__main__":
    main()
