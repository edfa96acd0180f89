"""Peak memory of keras_lrp.explain as the number of inputs grows (batches keep it flat).

    python bench/bench_memory.py            # 1,000 vs 10,000 sentences
    python bench/bench_memory.py --n 1000 5000 20000

Each N runs in a fresh process: the paper-sized Bidirectional(LSTM(60)) + Dense(5) on (N, 20, 60)
inputs, explain(batch_size=256). Printed: the process's peak resident memory (ru_maxrss) after
loading TensorFlow and building the model, after explain, the growth, and the ratio of peaks to the
smallest N. The inputs and the returned relevance (N x 20 x 60 float32 each) are part of the peak.
"""
import argparse
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 10000])
    args = parser.parse_args()
    print(f"{'N':>7} {'before MiB':>11} {'peak MiB':>9} {'growth MiB':>11} {'peak / peak(N0)':>16}")
    first = None
    for n in args.n:
        out = subprocess.run([sys.executable, "-c", CHILD, str(n)], capture_output=True, text=True, check=True)
        base, peak = (int(v) / 1024 for v in out.stdout.split())
        first = first or peak
        print(f"{n:>7} {base:>11.0f} {peak:>9.0f} {peak - base:>11.0f} {peak / first:>16.2f}", flush=True)


if __name__ == "__main__":
    main()
