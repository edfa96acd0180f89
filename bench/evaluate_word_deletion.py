"""Word deletion (Arras et al. 2017) on the shipped SST-5 bi-LSTM, all SST test sentences, all methods.

    python bench/evaluate_word_deletion.py                      # ~20 s on 2 CPU cores (27 s with start-up)
    python bench/evaluate_word_deletion.py --max-sentences 300  # any `keras-lrp evaluate` option

Writes docs/evaluation/word_deletion_sst5.{png,md,json} (or --out-dir). The same as
``keras-lrp evaluate --out-dir docs/evaluation``.
"""
import sys

from _evaluate_launcher import evaluate


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, run = evaluate("evaluate_word_deletion.py", argv)
    if "--toy" in argv:
        parser.error("this script runs word deletion; use bench/evaluate_toy.py for the toy task")
    return run()


if __name__ == "__main__":
    sys.exit(main())
