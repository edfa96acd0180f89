"""The toy arithmetic task (Arras et al. 2019): train LSTM(16) -> Dense(1) on "add" and "subtract"
(20000 training sequences of length 10, 20 epochs) and score every method on 2000 test sequences.

    python bench/evaluate_toy.py                    # both operations, about 1.5 minutes on 2 CPU cores
    python bench/evaluate_toy.py --bidirectional    # any `keras-lrp evaluate --toy` option

Writes docs/evaluation/toy_{add,subtract}[_bilstm].{png,md,json} (or --out-dir). Each operation is
the same as ``keras-lrp evaluate --toy --operation OP --out-dir docs/evaluation``.
"""
import sys

from _evaluate_launcher import evaluate


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _, run = evaluate("evaluate_toy.py", ["--toy", *argv])
    for extra in ([["--operation", "add"], ["--operation", "subtract"]] if "--operation" not in argv else [[]]):
        code = run(*extra)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
