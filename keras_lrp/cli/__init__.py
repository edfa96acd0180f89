"""The ``keras-lrp`` command line (entry point ``keras_lrp.cli:main``).

Arguments are parsed and checked, inputs read and outputs opened before TensorFlow is imported,
so a mistake costs a fraction of a second. Exit codes: 0 ok, 1 runtime error, 2 usage error,
130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Optional, Sequence

from .. import __version__

__all__ = ["main", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_INTERRUPTED"]

PROG = "keras-lrp"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

#: Sentences per input-order chunk: JSON lines are written chunk by chunk.
_CHUNK = 1024

_EPILOG = """\
examples:
  keras-lrp explain "i hate the movie though the plot is interesting ."      # shipped SST-5 model
  keras-lrp explain --shipped sst2 --target positive "a gorgeous , witty , seductive movie ."
  keras-lrp explain --input sentences.txt --json out.jsonl --html out.html
  cat sentences.txt | keras-lrp explain --method gi
  keras-lrp explain --model my.h5 --vocab tokenizer.json --classes neg,pos "some text"
  keras-lrp explain --model series.keras --npy x.npy --png heatmap.png
  keras-lrp explain --input corpus.txt --engine ray --workers 4 --out-dir runs/a   # rerun to resume
  keras-lrp evaluate --max-sentences 300
  keras-lrp evaluate --toy

exit codes: 0 ok, 1 runtime error (a file cannot be read, a model cannot be explained),
            2 usage error (bad or conflicting options, no text, an output path that cannot be written),
            130 interrupted (Ctrl-C; the JSON lines finished so far are kept).
"""

_EXPLAIN_EPILOG = """\
vocabulary files (--vocab), recognised by their content:
  * a keras-lrp vocabulary (keras_lrp.Vocabulary.save); text is split by the PTB-style
    keras_lrp.Tokenizer, unknown words get id 1;
  * a Keras Tokenizer saved with tokenizer.to_json(); text is split as that tokenizer splits it
    (its lower, filters, split, char_level), ids are its word_index (num_words respected);
  * a plain word_index JSON {"word": id, ...}; text is split like a default Keras Tokenizer
    (lowercased, punctuation removed).
  With the Keras formats an unknown word gets the oov_token's id (a word_index JSON: the id of its
  <OOV> / <unk> / [UNK] entry, if it has one); without one it is left out, as Keras's
  texts_to_sequences leaves it out (listed in the JSON as dropped_tokens).
  Unknown words are marked * and listed in the JSON (oov_tokens).
  A .keras model starting with TextVectorization needs no --vocab: it tokenizes itself.

padding: a model with a fixed input length (or --maxlen) gets every sentence padded with id 0 and
cut to that length as keras.utils.pad_sequences does: --padding pre (default) / post, --truncating
pre (default: the start is cut) / post. The padding is shown as <pad>.

input: one sentence per line (empty lines skipped), UTF-8; sentences are read, explained and written
a chunk at a time, so memory stays flat however many lines there are. A sentence of more than
--max-length tokens (default 100,000) is refused after tokenizing that many.

outputs: --json (one JSON line per sentence, in input order), --html (all sentences, one shared
colour scale; spooled to a temporary file, written at the end), --png (the first sentence; with
--npy the first sample's time x feature heatmap), --out (with --npy: the relevance array, default
X_relevance.npy). Output paths are checked before any work; each output is written to a new
temporary file and renamed into place (a symlink there is replaced, not followed), so a failed run
leaves no partial file (an interrupted one keeps the finished JSON lines).

examples:
  keras-lrp explain "i hate the movie though the plot is interesting ."
  keras-lrp explain --input sentences.txt --json out.jsonl      # prints: wrote 12 explanations to out.jsonl
  keras-lrp explain --model imdb.keras --vocab tokenizer.json --classes neg,pos "a great film"
  keras-lrp explain --model imdb.h5 --vocab tokenizer.json --padding post "a great film"
  keras-lrp explain --model reviews.keras "a great film"          # a model starting with TextVectorization
  keras-lrp explain --model series.keras --npy x.npy --out relevance.npy --png heatmap.png
  keras-lrp explain --method shapley --samples 64 --seed 1 --baseline unk "a great film"
  keras-lrp explain --method ig --steps 128 --input sentences.txt --json ig.jsonl
  keras-lrp explain --method occlusion --window 2 --baseline 0.5 --model series.keras --npy x.npy

baselines (--method ig / occlusion / shapley): the options above; each is refused with another method.
The JSON lines record them (method_options: every option of the method, defaults included).

exit codes: 0 ok, 1 runtime error, 2 usage error, 130 interrupted.
"""


class UsageError(Exception):
    """The command line is wrong (bad or conflicting options, no text): exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with the user's text in its messages shown safely on a terminal."""

    def error(self, message: str):
        from ..safe_io import printable

        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {printable(message)}\n")


def _parser() -> argparse.ArgumentParser:
    from ..experiments.evaluate import add_evaluate_parser, finite_float, int_at_least, nonnegative_float
    from .method_options import add_method_option_arguments

    parser = _Parser(prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Explain Keras LSTM/GRU predictions with LRP "
                                                 "(Arras et al. 2017).", epilog=_EPILOG)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{explain,evaluate}")
    p = sub.add_parser("explain", help="explain text (or --npy sequences) with a model",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Explain sentences with the shipped SST model or your own, or numeric "
                                   "sequences (--npy) with a time-series model.", epilog=_EXPLAIN_EPILOG)
    p.add_argument("text", nargs="?", help="a sentence; without it, sentences are read from --input or stdin")
    p.add_argument("--input", help="file with one sentence per line")
    p.add_argument("--model", help="a .keras or .h5 model (default: the shipped SST-5 bi-LSTM)")
    p.add_argument("--shipped", default="sst5", choices=["sst5", "sst2"], help="which shipped model (default sst5)")
    p.add_argument("--vocab", help="vocabulary for --model: a keras-lrp vocabulary, a Keras Tokenizer JSON "
                                   "(tokenizer.to_json()) or a word_index JSON (see below)")
    p.add_argument("--embeddings", help="embedding matrix .npy, when --model takes vectors")
    p.add_argument("--maxlen", type=int_at_least(1), default=None,
                   help="with --model: pad / cut every sentence to this many ids, as pad_sequences(maxlen=) "
                        "(default: the model's fixed input length, if it has one, else none)")
    p.add_argument("--padding", choices=["pre", "post"], default=None,
                   help="with --model: where the id-0 padding goes, as in pad_sequences (default pre, Keras's)")
    p.add_argument("--truncating", choices=["pre", "post"], default=None,
                   help="with --model: which end of a longer sentence is cut, as in pad_sequences (default pre: "
                        "the start, Keras's)")
    p.add_argument("--classes", help="comma-separated class names for --model")
    p.add_argument("--target", help="class index or name to explain (default: the predicted class)")
    p.add_argument("--eps", type=nonnegative_float, default=1e-3, help="epsilon-rule stabiliser >= 0 (default 0.001)")
    p.add_argument("--bias-factor", type=finite_float, default=0.0, help="bias share, 0 (default) to 1")
    p.add_argument("--rule", default="all", choices=["all", "half", "prop"], help="gate rule (default all)")
    p.add_argument("--method", default="lrp", choices=["lrp", "gi", "sa", "ig", "occlusion", "shapley"],
                   help="lrp (default), gi = gradient x input, sa = sensitivity analysis, ig = Integrated "
                        "Gradients, occlusion, shapley = Shapley sampling (their options: see below)")
    p.add_argument("--float64", action="store_true", help="compute in float64")
    p.add_argument("--json", help="write JSON lines (one per sentence, in input order) to this file")
    p.add_argument("--html", help="write an HTML heatmap page to this file")
    p.add_argument("--png", help="write a PNG heatmap to this file")
    p.add_argument("--npy", help="explain numeric sequences from this .npy (batch, time, features)")
    p.add_argument("--out", help="with --npy: where to write the relevance .npy")
    p.add_argument("--batch-size", type=int_at_least(1), default=256, help="sentences per batch (default 256)")
    p.add_argument("--max-length", type=int_at_least(1), default=None,
                   help="most tokens a sentence may have (default 100,000, keras_lrp's max_length); "
                        "memory grows with tokens x units")
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="ray: explain --input on Ray Data workers, resumable (pip install 'keras-lrp[distributed]')")
    p.add_argument("--address", help="with --engine ray: a Ray cluster address (default: a local instance)")
    p.add_argument("--workers", type=int_at_least(1), default=1, help="with --engine ray: number of workers")
    p.add_argument("--shard-size", type=int_at_least(1), default=4096,
                   help="with --engine ray: sentences per shard (the unit of resumption)")
    p.add_argument("--out-dir", help="with --engine ray: output folder (shards/, out.jsonl); rerun to resume")
    p.add_argument("--no-color", action="store_true", help="no ANSI colours")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks, every warning, and TensorFlow's "
                                                          "and Ray's logs")
    add_method_option_arguments(p, int_at_least)
    add_evaluate_parser(sub)
    return parser


def _error(message: str) -> None:
    from ..safe_io import printable

    print(f"{PROG}: error: {printable(message)}", file=sys.stderr)


def _warning(message: str) -> None:
    from ..safe_io import printable

    print(f"{PROG}: warning: {printable(message)}", file=sys.stderr)


# Lines of a TensorFlow / Keras error message that frame the cause rather than state it.
_FRAME_PREFIXES = ("in user code:", "File ", "Traceback", "[[", "Detected at node", "Graph execution error",
                   "Call arguments received", "During handling", "The above exception", "•", "Exception encountered")


def one_line(err: BaseException) -> str:
    """The line of ``err``'s message that states the cause: its first line, unless that only
    frames what follows (TensorFlow's "in user code:", "Graph execution error:"), then the last
    line that is not a frame (the root cause, e.g. "ValueError: ..."). Never empty."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if len(lines) == 1 or not (lines[0].endswith(":") or lines[0].startswith(_FRAME_PREFIXES)):
        return lines[0]
    causes = [line for line in lines if not line.startswith(_FRAME_PREFIXES)]
    return causes[-1] if causes else lines[0]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``keras-lrp`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:     # --help, --version (0) and argparse's usage errors (2)
        return exit_.code if isinstance(exit_.code, int) else (EXIT_OK if exit_.code is None else EXIT_USAGE)
    from ..quiet import check_backend_installed, start_backend_quietly, summarized_warnings

    try:
        check_backend_installed()   # before anything imports Keras
        from ..experiments.evaluate import EvaluateArgumentError
        from .outputs import OutputError
    except ImportError as err:
        _error(str(err))
        return EXIT_ERROR
    try:
        with contextlib.ExitStack() as stack:
            if not args.debug:     # each cause of warning once, with its count, when the run ends
                stack.enter_context(summarized_warnings(report=_warning))
            if args.command == "evaluate":
                from ..experiments.evaluate import check_evaluate_args, run_evaluate

                check_evaluate_args(args)
                start_backend_quietly(debug=args.debug)
                return run_evaluate(args)
            from .corpus import check_engine_args
            from .explain import prepare_explain, run_explain

            check_engine_args(args)
            job = prepare_explain(args)          # options, inputs and outputs checked; no backend started yet
            start_backend_quietly(debug=args.debug)
            return run_explain(job, chunk=_CHUNK)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - every error becomes one readable line
        if args.debug:
            raise
        _error(one_line(err))
        return EXIT_USAGE if isinstance(err, (UsageError, EvaluateArgumentError, OutputError)) else EXIT_ERROR
