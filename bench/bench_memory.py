"""Peak memory of keras_lrp.explain as the number of inputs grows (batches keep it flat), and
against the model's own gradient x input on long sequences.

    python bench/bench_memory.py            # both tables
    python bench/bench_memory.py --n 1000 5000 20000 --T 500

Each N runs in a fresh process: the paper-sized Bidirectional(LSTM(60)) + Dense(5) on (N, 20, 60)
inputs, explain(batch_size=256). Printed: the process's peak resident memory (ru_maxrss) after
loading TensorFlow and building the model, after explain, the growth, and the ratio of peaks to the
smallest N. The inputs and the returned relevance (N x 20 x 60 float32 each) are part of the peak.

The second table explains one batch of 256 sequences of --T steps (default 1,000) with ``explain``
(float32, float64) and with the Keras model's compiled gradient x input, each in a fresh process
after a small warm-up call, and prints each one's growth of peak resident memory during the call.
"""
import argparse
import pathlib
import subprocess
import sys

CHILD = r"""
import os, resource, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras, numpy as np, keras_lrp
n = int(sys.argv[1])
model = keras.Sequential([keras.Input((None, 60)), keras.layers.Bidirectional(keras.layers.LSTM(60)),
                          keras.layers.Dense(5, use_bias=False)])
keras_lrp.explain(model, np.zeros((4, 20, 60), "float32"))      # compile once
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
x = np.random.default_rng(0).standard_normal((n, 20, 60)).astype("float32")
e = keras_lrp.explain(model, x, batch_size=256)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(base, peak)
"""


VERSUS = r"""
import os, resource, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf, keras_lrp
mode, T = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, sys.argv[3])
from bench_explain import gradient_x_input, setting
model, x = setting("bilstm", T, 60, 256)
if mode == "gradient x input":
    run = gradient_x_input(model)
    call = lambda a: run(tf.constant(a)).numpy()
else:
    explainer = keras_lrp.LRP(model, dtype=mode.split()[-1])
    call = lambda a: explainer.attribute(a, batch_size=256).relevance
call(x[:4, :5])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
call(x)
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def versus_gradient(T: int):
    print(f"\n256 sequences of {T} steps, Bidirectional(LSTM(60)) + Dense(5), one batch:")
    print(f"{'method':>18} {'growth MiB':>11} {'/ gradient x input':>19}")
    growth = {}
    for mode in ("gradient x input", "explain float32", "explain float64"):
        out = subprocess.run([sys.executable, "-c", VERSUS, mode, str(T), str(pathlib.Path(__file__).resolve().parent)],
                             capture_output=True, text=True, check=True)
        base, peak = (int(v) / 1024 for v in out.stdout.split())
        growth[mode] = peak - base
        print(f"{mode:>18} {growth[mode]:>11.0f} {growth[mode] / growth['gradient x input']:>19.2f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--T", type=int, default=1000, help="steps for the gradient x input comparison")
    args = parser.parse_args()
    print(f"{'N':>7} {'before MiB':>11} {'peak MiB':>9} {'growth MiB':>11} {'peak / peak(N0)':>16}")
    first = None
    for n in args.n:
        out = subprocess.run([sys.executable, "-c", CHILD, str(n)], capture_output=True, text=True, check=True)
        base, peak = (int(v) / 1024 for v in out.stdout.split())
        first = first or peak
        print(f"{n:>7} {base:>11.0f} {peak:>9.0f} {peak - base:>11.0f} {peak / first:>16.2f}", flush=True)
    versus_gradient(args.T)


if __name__ == "__main__":
    main()
