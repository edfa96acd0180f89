"""The toy arithmetic task (Arras et al. 2019): train LSTM(16) -> Dense(1) on "add" and "subtract"
(20000 training sequences of length 10, 20 epochs) and score every method on 2000 test sequences.

    python bench/evaluate_toy.py                    # both operations, about 1.5 minutes on 2 CPU cores
    python bench/evaluate_toy.py --bidirectional    # any `keras-lrp evaluate --toy` option

Writes docs/evaluation/toy_{add,subtract}[_bilstm].{png,md,json} (or --out-dir). Each operation is
the same as ``keras-lrp evaluate --toy --operation OP --out-dir docs/evaluation``.
"""
import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from keras_lrp.evaluate import add_evaluate_parser, run_evaluate  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "evaluation")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="evaluate_toy.py")
    add_evaluate_parser(parser.add_subparsers(dest="command"))
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--out-dir" not in argv:
        argv += ["--out-dir", OUT]
    operations = ["add", "subtract"] if "--operation" not in argv else [None]
    for op in operations:
        extra = [] if op is None else ["--operation", op]
        code = run_evaluate(parser.parse_args(["evaluate", "--toy", *argv, *extra]))
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
