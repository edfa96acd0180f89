"""Speed of keras_lrp.explain relative to the model's own compiled forward pass, same process.

    python bench/bench_explain.py            # the README table
    python bench/bench_explain.py --quick    # one small setting

Prints, per setting: forward time (tf.function(model) on a tf.Tensor), explain time (LRP.attribute on
the numpy batch, everything included), their ratio (target <= 3x), and sequences/s. Each timing is the
median of --repeats calls after a warm-up call, the two calls interleaved so that a change of machine
load affects both.
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


def interleaved_medians(fns, repeats):
    """Median wall time of each function, calls interleaved so that load changes hit all alike."""
    for fn in fns:
        fn()  # warm-up (tracing)
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


ARCHITECTURES = {
    "bilstm": lambda u: [keras.layers.Bidirectional(keras.layers.LSTM(u))],
    "stack3": lambda u: [keras.layers.LSTM(u, return_sequences=True),
                         keras.layers.Bidirectional(keras.layers.LSTM(u, return_sequences=True)),
                         keras.layers.LSTM(u)],
    "bigru": lambda u: [keras.layers.Bidirectional(keras.layers.GRU(u))],
}


def attention_model(units, features, classes):
    """Bidirectional(LSTM(units, return_sequences)) -> MultiHeadAttention(2 heads, key_dim 16) self-attention
    -> GlobalAveragePooling1D -> Dense(classes) (functional: the attention layer has two inputs)."""
    inp = keras.Input((None, features))
    h = keras.layers.Bidirectional(keras.layers.LSTM(units, return_sequences=True))(inp)
    a = keras.layers.MultiHeadAttention(num_heads=2, key_dim=16)(h, h)
    out = keras.layers.Dense(classes, use_bias=False)(keras.layers.GlobalAveragePooling1D()(a))
    return keras.Model(inp, out)


def build_model(arch, units, features, classes):
    if arch == "bilstm_mha":
        return attention_model(units, features, classes)
    return keras.Sequential([keras.Input((None, features))] + ARCHITECTURES[arch](units)
                            + [keras.layers.Dense(classes, use_bias=False)])


def bench(T, units, arch="bilstm", batch=256, features=60, classes=5, repeats=5, dtype="float32", rule="all"):
    keras.utils.set_random_seed(0)
    model = build_model(arch, units, features, classes)
    x = np.random.default_rng(0).standard_normal((batch, T, features)).astype("float32")
    forward = tf.function(model)
    xt = tf.constant(x)
    explainer = keras_lrp.LRP(model, dtype=dtype, rule=rule)
    return interleaved_medians([lambda: forward(xt).numpy(), lambda: explainer.attribute(x, batch_size=batch)],
                               repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one small setting only")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--only", choices=sorted(ARCHITECTURES) + ["bilstm_mha"], help="run one architecture's rows")
    args = parser.parse_args()
    settings = [("bilstm", 20, 60)] if args.quick else [
        ("bilstm", 20, 60), ("bilstm", 50, 60), ("bilstm", 100, 60), ("bilstm", 200, 60), ("bilstm", 100, 256),
        ("stack3", 50, 60), ("bigru", 50, 60), ("bilstm_mha", 50, 60)]
    if args.only:
        settings = [s for s in settings if s[0] == args.only]
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, {os.cpu_count()} CPUs; "
          "bilstm = Bidirectional(LSTM(units)), stack3 = LSTM > Bidirectional(LSTM) > LSTM, bigru = Bidirectional(GRU(units)); "
          "bilstm_mha = Bidirectional(LSTM(units, return_sequences)) > MultiHeadAttention(2 heads, key_dim 16) > "
          "GlobalAveragePooling1D; each + Dense(5), batch 256, 60 features, float32, rule 'all'")
    print(f"{'model':>10} {'T':>4} {'units':>5} {'forward s':>10} {'explain s':>10} {'ratio':>6} {'explain seq/s':>14}")
    for arch, T, units in settings:
        t_fwd, t_lrp = bench(T, units, arch=arch, repeats=args.repeats)
        print(f"{arch:>10} {T:>4} {units:>5} {t_fwd:>10.4f} {t_lrp:>10.4f} {t_lrp / t_fwd:>6.2f} {256 / t_lrp:>14.0f}",
              flush=True)


if __name__ == "__main__":
    main()
