"""Word deletion (Arras et al. 2017) on the shipped SST-5 bi-LSTM, all SST test sentences, all methods.

    python bench/evaluate_word_deletion.py                      # about a minute on 2 CPU cores
    python bench/evaluate_word_deletion.py --max-sentences 300  # any `keras-lrp evaluate` option

Writes docs/evaluation/word_deletion_sst5.{png,md,json} (or --out-dir). The same as
``keras-lrp evaluate --out-dir docs/evaluation``.
"""
import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from keras_lrp.evaluate import add_evaluate_parser, run_evaluate  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "evaluation")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="evaluate_word_deletion.py")
    add_evaluate_parser(parser.add_subparsers(dest="command"))
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--toy" in argv:
        parser.error("this script runs word deletion; use bench/evaluate_toy.py for the toy task")
    if "--out-dir" not in argv:
        argv += ["--out-dir", OUT]
    return run_evaluate(parser.parse_args(["evaluate", *argv]))


if __name__ == "__main__":
    sys.exit(main())
