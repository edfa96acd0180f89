"""Shared by the bench/evaluate_*.py launchers: run ``keras-lrp evaluate`` with docs/evaluation as the
default output folder (as the command runs: TensorFlow's start-up lines hidden, warnings summed up)."""
import argparse
import os
from typing import Callable, List, Tuple

from keras_lrp.cli import main
from keras_lrp.experiments.evaluate import add_evaluate_parser

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "evaluation")


def evaluate(prog: str, argv: List[str]) -> Tuple[argparse.ArgumentParser, Callable[..., int]]:
    """(parser, run) for ``prog``: ``run(*extra_args)`` runs ``keras-lrp evaluate`` on argv + extra_args,
    writing to docs/evaluation unless argv names ``--out-dir``."""
    parser = argparse.ArgumentParser(prog=prog)
    add_evaluate_parser(parser.add_subparsers(dest="command"))
    argv = list(argv)
    if "--out-dir" not in argv:
        argv += ["--out-dir", OUT]
    parser.parse_args(["evaluate", *argv])        # usage errors name this script
    return parser, lambda *extra: main(["evaluate", *argv, *extra])
