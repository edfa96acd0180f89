"""Speed of keras_lrp.explain against the model's own baselines, same process (issue 12's tables).

    python bench/bench_explain.py            # all tables of the README's Speed section
    python bench/bench_explain.py --quick    # one small setting per table
    python bench/bench_explain.py --pin      # on one core, one thread (issue 23's single-core goals)
    python bench/bench_explain.py --pin --cpu --tables 45   # CPU time: a loaded machine's waits left out

Prints
1. per README configuration (batch 256, float32): the model's compiled forward pass
   (``tf.function(model)`` on a tf.Tensor), its compiled gradient x input (``tf.GradientTape`` through
   the Keras model, the predicted class's score), ``LRP.attribute`` (numpy in, Explanation out,
   everything included), explain / forward, explain / gradient x input, and sequences/s;
2. interactive latency: one sequence (batch 1, T = 20), explain / forward, for the Bi-LSTM;
3. float64 / float32: explain time in each dtype, same model and batch;
4. the gradient baselines: ``Explainer(method="gi")`` and ``"sa"`` (numpy in, Explanation out) against
   the hand-written compiled gradient x input of table 1 (issue 21's goal: at most 1.1x);
5. the static batch axis: ``method="gi"`` and LRP, B = 256, with the compiled function's batch axis
   dynamic (one trace for every batch size) and static (traced for the row count of a full call: what
   ``keras_lrp.backend.static_batch`` gives; the explainer uses it for full batches of "gi" / "sa").
Each timing is the median of --repeats calls after a warm-up call, the calls interleaved so that a
change of machine load affects all alike: wall time, or with --cpu this process's CPU time
(``time.process_time``; with --pin, the one core's work without the time other processes took it).

--jit-compile explains with ``jit_compile=True`` (XLA) in tables 1, 2 and 4, and adds the same baselines
compiled by XLA (``tf.function(..., jit_compile=True)``) beside the plain ones: each ratio is then given
against both (a first call per shape compiles; the medians are of later calls).

--pin runs the process on one core (``os.sched_setaffinity``, the highest-numbered core it may use,
or --core) with one TensorFlow thread (intra- and inter-op), both set before TensorFlow starts: the
explainer and its baselines then get the same single core, whatever else the machine runs, and table 1
adds the T=500 row of issue 23.
"""
import argparse
import os
import time

from _timing import pin_to_one_core


def _pin_arguments():
    """--pin / --core, read before TensorFlow is imported (the full parser is in main)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--pin", action="store_true")
    parser.add_argument("--core", type=int)
    return parser.parse_known_args()[0]


_PIN = _pin_arguments()
PINNED = pin_to_one_core(_PIN.core) if _PIN.pin else None

from keras_lrp.quiet import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()     # TensorFlow's start-up lines hidden

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_lrp  # noqa: E402
from _timing import interleaved_medians  # noqa: E402

if PINNED is not None:          # before TensorFlow's runtime starts (its first op)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


#: the clock of every timing: wall time, or this process's CPU time with --cpu (set in main)
CLOCK = time.perf_counter
#: --jit-compile: the explainers compiled by XLA, and the baselines timed with XLA too (set in main)
JIT = False


def medians(fns, repeats):
    return interleaved_medians(fns, repeats, clock=CLOCK)


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


def gradient_x_input(model, jit_compile=False):
    """The baseline: the Keras model's own gradient x input of the predicted class, compiled (by XLA with
    ``jit_compile``)."""
    def gxi(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = model(x)
            score = tf.reduce_sum(tf.gather(out, tf.argmax(out, axis=-1, output_type=tf.int32), batch_dims=1))
        return tape.gradient(score, x) * x
    return tf.function(gxi, jit_compile=jit_compile)


def with_xla(fns, model, xt, baseline):
    """``fns`` plus, with --jit-compile, ``baseline`` compiled by XLA (``forward`` or ``gxi``)."""
    if not JIT:
        return fns
    xla = tf.function(model, jit_compile=True) if baseline == "forward" else gradient_x_input(model, True)
    return fns + [lambda: xla(xt).numpy()]


def setting(arch, T, units, batch, features=60, classes=5):
    keras.utils.set_random_seed(0)
    model = build_model(arch, units, features, classes)
    x = np.random.default_rng(0).standard_normal((batch, T, features)).astype("float32")
    return model, x


def bench_ratios(arch, T, units, batch=256, repeats=5):
    """(forward, gradient x input, explain[, gradient x input by XLA]) median seconds at float32."""
    model, x = setting(arch, T, units, batch)
    forward, gxi, xt = tf.function(model), gradient_x_input(model), tf.constant(x)
    explainer = keras_lrp.LRP(model, jit_compile=JIT)
    return medians(with_xla([lambda: forward(xt).numpy(), lambda: gxi(xt).numpy(),
                             lambda: explainer.attribute(x, batch_size=batch)], model, xt, "gxi"), repeats)


def bench_latency(T=20, units=60, repeats=300):
    """(forward, explain[, forward by XLA]) median seconds for one sequence: the interactive case."""
    model, x = setting("bilstm", T, units, 1)
    forward, xt = tf.function(model), tf.constant(x)
    explainer = keras_lrp.LRP(model, jit_compile=JIT)
    return medians(with_xla([lambda: forward(xt).numpy(), lambda: explainer.attribute(x)], model, xt, "forward"),
                   repeats)


def bench_dtypes(arch, T, units, batch=256, repeats=5):
    """(float32, float64) median seconds of explain."""
    model, x = setting(arch, T, units, batch)
    e32, e64 = keras_lrp.LRP(model, dtype="float32"), keras_lrp.LRP(model, dtype="float64")
    return medians([lambda: e32.attribute(x, batch_size=batch),
                    lambda: e64.attribute(x, batch_size=batch)], repeats)


def bench_gradient_methods(arch, T, units, batch=256, repeats=5):
    """(hand-written gradient x input, method="gi", method="sa"[, gradient x input by XLA]) median seconds at
    float32."""
    model, x = setting(arch, T, units, batch)
    gxi, xt = gradient_x_input(model), tf.constant(x)
    gi, sa = (keras_lrp.Explainer(model, method=m, jit_compile=JIT) for m in ("gi", "sa"))
    return medians(with_xla([lambda: gxi(xt).numpy(), lambda: gi.attribute(x, batch_size=batch),
                             lambda: sa.attribute(x, batch_size=batch)], model, xt, "gxi"), repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one small setting per table")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--only", choices=sorted(ARCHITECTURES) + ["bilstm_mha"], help="run one architecture's rows")
    parser.add_argument("--pin", action="store_true", help="one core, one TensorFlow thread")
    parser.add_argument("--core", type=int, help="the core for --pin (default: the highest-numbered usable)")
    parser.add_argument("--tables", default="1234", help="which tables to print (default 1234; 5: static batch)")
    parser.add_argument("--cpu", action="store_true", help="time in process CPU time, not wall time")
    parser.add_argument("--jit-compile", action="store_true", help="explainers (and extra baselines) compiled by XLA")
    args = parser.parse_args()
    global CLOCK, JIT
    CLOCK = time.process_time if args.cpu else time.perf_counter
    JIT = args.jit_compile
    settings = [("bilstm", 20, 60)] if args.quick else [
        ("bilstm", 20, 60), ("bilstm", 50, 60), ("bilstm", 100, 60), ("bilstm", 200, 60), ("bilstm", 100, 256),
        ("stack3", 50, 60), ("bigru", 50, 60), ("bilstm_mha", 50, 60)] + ([("bilstm", 500, 60)] if args.pin else [])
    if args.only:
        settings = [s for s in settings if s[0] == args.only]
    pinned = (f"pinned to core {PINNED}, 1 TensorFlow thread" if PINNED is not None
              else f"{len(os.sched_getaffinity(0))} usable cores, TensorFlow's default threads")
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, {os.cpu_count()} CPUs, {cpu_name()}, {pinned}, "
          f"load average {os.getloadavg()[0]:.1f}; times: {'process CPU' if args.cpu else 'wall'}"
          + ("; explainers compiled by XLA (jit_compile=True)" if JIT else ""))
    print("bilstm = Bidirectional(LSTM(units)), stack3 = LSTM > Bidirectional(LSTM) > LSTM, bigru = "
          "Bidirectional(GRU(units)); bilstm_mha = Bidirectional(LSTM(units, return_sequences)) > "
          "MultiHeadAttention(2 heads, key_dim 16) > GlobalAveragePooling1D; each + Dense(5), 60 features, rule 'all'")
    if "1" in args.tables:
        table_batch(settings, args.repeats)
    if "2" in args.tables:
        table_latency(args.quick)
    if "3" in args.tables:
        table_dtypes(args.quick, args.repeats)
    if "4" in args.tables:
        table_gradients(settings, args.repeats)
    if "5" in args.tables:
        table_static_batch(args.quick, args.repeats)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


def table_batch(settings, repeats):
    print("\n1. batch 256, float32")
    print(f"{'model':>10} {'T':>4} {'units':>5} {'forward s':>10} {'grad*in s':>10} {'explain s':>10} "
          f"{'/forward':>9} {'/grad*in':>9} {'explain seq/s':>14}" + (f" {'XLA g*in s':>11} {'/XLA g*in':>10}" if JIT else ""))
    for arch, T, units in settings:
        t_fwd, t_gxi, t_lrp, *xla = bench_ratios(arch, T, units, repeats=repeats)
        print(f"{arch:>10} {T:>4} {units:>5} {t_fwd:>10.4f} {t_gxi:>10.4f} {t_lrp:>10.4f} {t_lrp / t_fwd:>9.2f} "
              f"{t_lrp / t_gxi:>9.2f} {256 / t_lrp:>14.0f}" + "".join(f" {t:>11.4f} {t_lrp / t:>10.2f}" for t in xla),
              flush=True)


def table_gradients(settings, repeats):
    print("\n4. gradient baselines, batch 256, float32: method='gi' / 'sa' against the hand-written gradient x input")
    print(f"{'model':>10} {'T':>4} {'units':>5} {'grad*in s':>10} {'gi s':>10} {'sa s':>10} {'gi/hand':>8} {'sa/hand':>8}"
          + (f" {'XLA hand s':>11} {'gi/XLA':>7}" if JIT else ""))
    for arch, T, units in settings:
        t_hand, t_gi, t_sa, *xla = bench_gradient_methods(arch, T, units, repeats=repeats)
        print(f"{arch:>10} {T:>4} {units:>5} {t_hand:>10.4f} {t_gi:>10.4f} {t_sa:>10.4f} {t_gi / t_hand:>8.2f} "
              f"{t_sa / t_hand:>8.2f}" + "".join(f" {t:>11.4f} {t_gi / t:>7.2f}" for t in xla), flush=True)


def table_latency(quick):
    print("\n2. one sequence (batch 1), bilstm, units 60, float32")
    print(f"{'T':>4} {'forward ms':>11} {'explain ms':>11} {'ratio':>6}" + (f" {'XLA fwd ms':>11} {'/XLA fwd':>9}" if JIT else ""))
    for T in [20] if quick else [20, 100]:
        t_fwd, t_lrp, *xla = bench_latency(T, repeats=30 if quick else 300)
        print(f"{T:>4} {1e3 * t_fwd:>11.3f} {1e3 * t_lrp:>11.3f} {t_lrp / t_fwd:>6.2f}"
              + "".join(f" {1e3 * t:>11.3f} {t_lrp / t:>9.2f}" for t in xla), flush=True)


def table_dtypes(quick, repeats):
    print("\n3. float64 / float32, batch 256")
    print(f"{'model':>10} {'T':>4} {'units':>5} {'float32 s':>10} {'float64 s':>10} {'ratio':>6}")
    for arch, T, units in [("bilstm", 20, 60)] if quick else [("bilstm", 20, 60), ("bilstm", 100, 60),
                                                                      ("bilstm", 100, 256), ("bigru", 50, 60)]:
        t32, t64 = bench_dtypes(arch, T, units, repeats=repeats)
        print(f"{arch:>10} {T:>4} {units:>5} {t32:>10.4f} {t64:>10.4f} {t64 / t32:>6.2f}", flush=True)


def static_rows(explainer, T, batch=256) -> int:
    """The rows of a full compiled call: the whole batch for the gradient methods, LRP's chunk otherwise."""
    return batch if explainer.method in ("gi", "sa") else min(batch, explainer._chunk_rows(T))


def bench_static_batch(method, T, units, batch=256, repeats=5):
    """(rows of a full call, then hand-written gradient x input, explain with a dynamic batch axis, with a
    static one) median seconds at float32, one explainer swapping its compiled function."""
    model, x = setting("bilstm", T, units, batch)
    gxi, xt = gradient_x_input(model), tf.constant(x)
    explainer = keras_lrp.Explainer(model, method=method)
    dynamic = explainer._fn
    rows = static_rows(explainer, T, batch)
    static = keras_lrp.backend.static_batch(dynamic, rows)

    def explain_with(fn):
        def run():
            explainer._fn = fn
            return explainer.attribute(x, batch_size=batch)
        return run
    # a wrapper without static_batch's cache: the explainer cannot swap in the static trace
    return (rows, *medians([lambda: gxi(xt).numpy(), explain_with(lambda *args: dynamic(*args)),
                            explain_with(static)], repeats))


def table_static_batch(quick, repeats):
    print("\n5. static batch axis, bilstm, units 60, batch 256, float32: explain with the compiled function's batch "
          "axis dynamic / static (traced for a full call's rows)")
    print(f"{'method':>6} {'T':>4} {'rows':>5} {'grad*in s':>10} {'dynamic s':>10} {'static s':>10} "
          f"{'dyn/hand':>9} {'stat/hand':>9} {'stat/dyn':>9}")
    for method, T in [("gi", 20), ("lrp", 20)] if quick else [("gi", 20), ("gi", 100), ("lrp", 20), ("lrp", 100),
                                                               ("lrp", 200)]:
        rows, t_hand, t_dyn, t_stat = bench_static_batch(method, T, 60, repeats=repeats)
        print(f"{method:>6} {T:>4} {rows:>5} {t_hand:>10.4f} {t_dyn:>10.4f} {t_stat:>10.4f} {t_dyn / t_hand:>9.2f} "
              f"{t_stat / t_hand:>9.2f} {t_stat / t_dyn:>9.3f}", flush=True)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform
        return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
