"""The ``evaluate`` command's logic: word deletion on the shipped SST model, or the toy task.

``keras-lrp evaluate ...`` and ``python -m keras_lrp.experiments.evaluate ...`` take the same options
(:func:`add_evaluate_parser`). :func:`check_evaluate_args` checks them without importing TensorFlow,
:func:`run_evaluate` runs the experiment (after checking again).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Callable, List, Optional, Sequence

__all__ = ["add_evaluate_parser", "check_evaluate_args", "run_evaluate", "EvaluateArgumentError",
           "int_at_least", "nonnegative_float", "finite_float"]


class EvaluateArgumentError(ValueError):
    """An option of the ``evaluate`` command is wrong (a usage error: exit code 2 in the CLI)."""


# ---- argparse types (shared with the explain command) --------------------------------------------

def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def finite_float(text: str) -> float:
    """An argparse ``type``: a finite real number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    """An argparse ``type``: a finite real number >= 0 (``--eps``)."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _methods(text: str) -> str:
    from ._common import DELETION_METHODS, check_methods

    try:
        return ",".join(check_methods(text, DELETION_METHODS))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand to an argparse ``subparsers`` object; returns its parser."""
    from ._common import DEFAULT_METHODS, DELETION_METHODS, REPLACEMENTS

    p = subparsers.add_parser(
        "evaluate", help="faithfulness evaluation: word deletion on the shipped model, or --toy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Word deletion (Arras et al. 2017) on SST sentences with the shipped model, or with --toy "
                    "the toy arithmetic task\nof Arras et al. 2019. Prints markdown tables; --out-dir also "
                    "writes PNG plots, the tables (.md) and the numbers (.json).",
        epilog="examples:\n"
               "  keras-lrp evaluate --max-sentences 300                 # word deletion, 300 random test sentences\n"
               "  keras-lrp evaluate --methods lrp,gi,random --out-dir results\n"
               "  keras-lrp evaluate --toy --operation subtract          # the toy arithmetic task\n")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), type=_methods,
                   help=f"comma-separated methods of {','.join(DELETION_METHODS)} (default "
                        f"{','.join(DEFAULT_METHODS)}; ig, occlusion and shapley take 34, T + 2 and "
                        "32 (T + 1) + 2 model evaluations per sentence of T words)")
    p.add_argument("--out-dir", help="folder for the plots, tables and JSON (created if missing)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the random baseline (and of the toy task)")
    p.add_argument("--eps", type=nonnegative_float, default=1e-3, help="epsilon-rule stabiliser >= 0 (default 0.001)")
    p.add_argument("--bias-factor", type=finite_float, default=0.0, help="bias share, 0 (default) to 1")
    p.add_argument("--batch-size", type=int_at_least(1), default=256, help="sentences per batch (default 256)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks")
    g = p.add_argument_group("word deletion")
    g.add_argument("--shipped", default="sst5", choices=["sst5", "sst2"], help="shipped model (default sst5)")
    g.add_argument("--data", help="SST file or folder (default: test.txt in $KERAS_LRP_SST_DIR or tests/data/sst)")
    g.add_argument("--split", default="test", choices=["train", "dev", "test"], help="SST split when --data is "
                   "a folder (default test)")
    g.add_argument("--max-sentences", type=int_at_least(1), help="use a random subset of N sentences, drawn with "
                   "--seed (default all)")
    g.add_argument("--max-deletions", type=int_at_least(0), default=5, help="delete up to this many words (default 5)")
    g.add_argument("--replacement", default="zero", choices=list(REPLACEMENTS),
                   help="a deleted word becomes the zero vector (default), the unknown token's or the padding's vector")
    t = p.add_argument_group("toy task")
    t.add_argument("--toy", action="store_true", help="run the toy arithmetic task instead")
    t.add_argument("--operation", default="add", choices=["add", "subtract"], help="toy target (default add)")
    t.add_argument("--length", type=int_at_least(2), default=10, help="toy sequence length (default 10)")
    t.add_argument("--n-train", type=int_at_least(1), default=20000, help="toy training sequences (default 20000)")
    t.add_argument("--n-test", type=int_at_least(1), default=2000, help="toy test sequences (default 2000)")
    t.add_argument("--units", type=int_at_least(1), default=16, help="toy LSTM units (default 16)")
    t.add_argument("--bidirectional", action="store_true", help="toy model Bidirectional(LSTM)")
    t.add_argument("--cell", default="lstm", choices=["lstm", "gru", "simple_rnn"],
                   help="toy model recurrent layer (default lstm)")
    t.add_argument("--epochs", type=int_at_least(1), default=20, help="toy training epochs (default 20)")
    return p


def check_evaluate_args(args: argparse.Namespace) -> None:
    """Check the options of ``evaluate`` (also when ``args`` was not made by argparse) and find the
    data and the shipped model, without importing TensorFlow.

    Raises:
        EvaluateArgumentError: saying which option is wrong and how to fix it.
    """
    from ._common import DELETION_METHODS, check_int, check_methods

    try:
        check_methods(args.methods, DELETION_METHODS)
        check_int("--seed", args.seed, 0)
        check_int("--batch-size", args.batch_size, 1)
        if args.toy:
            for name in ("length", "n_train", "n_test", "units", "epochs"):
                check_int("--" + name.replace("_", "-"), getattr(args, name), 2 if name == "length" else 1)
            if getattr(args, "cell", "lstm") not in ("lstm", "gru", "simple_rnn"):
                raise ValueError(f"--cell must be lstm, gru or simple_rnn, got {args.cell!r}")
        else:
            if args.max_sentences is not None:
                check_int("--max-sentences", args.max_sentences, 1)
            check_int("--max-deletions", args.max_deletions, 0)
    except ValueError as err:
        raise EvaluateArgumentError(str(err)) from None
    if args.out_dir and os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise EvaluateArgumentError(f"--out-dir {args.out_dir} exists and is not a folder")
    if not args.toy:
        _sst_path(args.data, args.split)
        from ..sst.pretrained import shipped_models_dir

        shipped_models_dir()     # ShippedModelNotFoundError, naming where it looked


def _write_outputs(out_dir: Optional[str], stem: str, result, title: str) -> List[str]:
    import json

    if not out_dir:
        return []
    from ..safe_io import atomic_write
    from ..visualize import save_png

    os.makedirs(out_dir, exist_ok=True)
    png = os.path.join(out_dir, f"{stem}.png")
    if stem.startswith("toy"):
        save_png(result.plot(), png, dpi=110)
    else:
        save_png(result.plot(title=title), png)
    md = os.path.join(out_dir, f"{stem}.md")
    atomic_write(md, f"# {title}\n\n{result.table()}\n")
    js = os.path.join(out_dir, f"{stem}.json")
    atomic_write(js, json.dumps(result.to_dict(), indent=1))
    return [png, md, js]


def run_evaluate(args: argparse.Namespace) -> int:
    """Run the ``evaluate`` subcommand parsed by :func:`add_evaluate_parser`; returns the exit code.

    Tables go to stdout, progress and ``wrote ...`` lines to stderr. Bad arguments raise
    :class:`EvaluateArgumentError` (or ``FileNotFoundError`` for ``--data``) before any heavy work.
    """
    check_evaluate_args(args)
    from ._common import check_methods, DELETION_METHODS

    methods = check_methods(args.methods, DELETION_METHODS)
    t0 = time.perf_counter()
    if args.toy:
        from .toy import run_toy_experiment

        training, result = run_toy_experiment(args.operation, args.length, args.n_train, args.n_test, args.units,
                                              args.bidirectional, args.epochs, methods, args.seed,
                                              verbose=not args.quiet, cell=getattr(args, "cell", "lstm"))
        print(result.table())
        cell = getattr(args, "cell", "lstm")
        name = ("bi" if args.bidirectional else "") + cell
        stem = f"toy_{args.operation}" + ("" if name == "lstm" else f"_{name}")
        layer = f"{dict(lstm='LSTM', gru='GRU', simple_rnn='SimpleRNN')[cell]}({args.units})"
        layer = f"Bidirectional({layer})" if args.bidirectional else layer
        title = f"Toy task '{args.operation}' (Arras et al. 2019), {layer} -> Dense(1)"
    else:
        from ..sst.pretrained import load_pretrained
        from .word_deletion import sst_word_deletion

        path = _sst_path(args.data, args.split)
        model = load_pretrained(args.shipped)
        result = sst_word_deletion(model, path, max_sentences=args.max_sentences, subset_seed=args.seed,
                                   methods=methods,
                                   max_deletions=args.max_deletions, replacement=args.replacement,
                                   eps=args.eps, bias_factor=args.bias_factor, batch_size=args.batch_size,
                                   seed=args.seed, progress=not args.quiet)
        print(f"model accuracy on the {result.n_correct + result.n_misclassified} sentences: "
              f"{100 * result.accuracy:.1f}%\n")
        print(result.table())
        stem = f"word_deletion_{args.shipped}" + ("" if args.replacement == "zero" else f"_{args.replacement}")
        title = (f"Word deletion, shipped {args.shipped} model, {os.path.basename(path)}, deleted word = "
                 + {"zero": "zero vector", "unk": "unknown token", "pad": "padding token"}[args.replacement])
    written = _write_outputs(args.out_dir, stem, result, title)
    if written and not args.quiet:
        print(f"wrote {len(written)} files to {args.out_dir}: " + ", ".join(os.path.basename(p) for p in written),
              file=sys.stderr)
    if not args.quiet:
        print(f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return 0


def _sst_path(data: Optional[str], split: str) -> str:
    from ..sst.reader import find_sst_dir

    if data is None:
        folder = find_sst_dir()
        if folder is None:
            raise EvaluateArgumentError("SST data not found: pass --data (an SST file such as test.txt, or its "
                                        "folder) or set KERAS_LRP_SST_DIR")
        return os.path.join(folder, f"{split}.txt")
    if os.path.isdir(data):
        path = os.path.join(data, f"{split}.txt")
        if not os.path.isfile(path):
            raise EvaluateArgumentError(f"--data {data}: no {split}.txt in that folder")
        return path
    if not os.path.isfile(data):
        raise EvaluateArgumentError(f"--data {data}: no such file or folder")
    return data


def _main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m keras_lrp.experiments.evaluate ...`` (the same options as ``keras-lrp evaluate``)."""
    parser = argparse.ArgumentParser(prog="python -m keras_lrp.experiments.evaluate")
    sub = parser.add_subparsers(dest="command", required=True)
    add_evaluate_parser(sub)
    args = parser.parse_args(["evaluate", *(sys.argv[1:] if argv is None else argv)])
    try:
        check_evaluate_args(args)
    except EvaluateArgumentError as err:
        parser.error(str(err))
    return run_evaluate(args)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(_main())
