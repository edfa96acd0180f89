"""The ``keras-lrp`` command line.

    keras-lrp explain "i hate the movie though the plot is interesting ."
    keras-lrp explain --input sentences.txt --json out.jsonl
    keras-lrp explain --model my.h5 --vocab vocab.json [--embeddings emb.npy] "some text"
    keras-lrp explain --model series.keras --npy x.npy --png heatmap.png

Errors are one line on stderr and a non-zero exit code (``--debug`` shows the traceback).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, TextIO

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _start_tensorflow_quietly():
    """Import TensorFlow and initialise its devices with the C++ start-up chatter (oneDNN, CUDA
    probing) sent to /dev/null: TensorFlow 2.21 prints it even with TF_CPP_MIN_LOG_LEVEL=3.
    Python errors still propagate (stderr is restored first)."""
    if "tensorflow" in sys.modules:
        return
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd is None:
        import tensorflow  # noqa: F401
        return
    sys.stderr.flush()
    saved, devnull = os.dup(fd), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        import tensorflow as tf
        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)

__all__ = ["main"]

PROG = "keras-lrp"


#: Sentences per input-order chunk: JSON lines are written chunk by chunk.
_CHUNK = 1024


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


# ----------------------------------------------------------------------------- model bundles

def models_dir() -> str:
    """Where the shipped models live: $KERAS_LRP_HOME/models, the source checkout's models/, or the
    copy ``pip install`` put under ``<prefix>/share/keras-lrp/models``."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidates = [os.path.join(os.environ["KERAS_LRP_HOME"], "models")] if os.environ.get("KERAS_LRP_HOME") else []
    candidates += [os.path.join(here, "models"), os.path.join(sys.prefix, "share", "keras-lrp", "models")]
    for c in candidates:
        if os.path.isfile(os.path.join(c, "sst5_bilstm.json")):
            return c
    raise CLIError("the shipped model was not found (looked in " + ", ".join(candidates) +
                   "); reinstall with `pip install .` or pass --model/--vocab")


@dataclass
class TextModel:
    """What the CLI needs to explain text: a model, a vocabulary, optionally an embedding matrix."""

    model: object
    vocabulary: object
    tokenizer: object
    embeddings: Optional[np.ndarray]      # None when the model starts with its own Embedding
    class_names: List[str]

    def encode(self, tokens: Sequence[str]):
        ids, oov = self.vocabulary.encode(tokens)
        x = np.asarray(ids, np.int32)[None]
        if self.embeddings is not None:
            x = self.embeddings[x]
        return x, np.asarray(oov, bool)


def _load_text_model(args) -> TextModel:
    from .text import Tokenizer, Vocabulary

    if args.model is None:
        if args.vocab or args.embeddings:
            raise CLIError("--vocab/--embeddings need --model")
        from .sst import load_pretrained
        bundle = load_pretrained(args.shipped, models_dir=models_dir())
        return TextModel(bundle.model, bundle.vocabulary, bundle.tokenizer, bundle.embeddings,
                         list(bundle.class_names))
    if not args.vocab:
        raise CLIError("--model with text needs --vocab (a JSON vocabulary); for numeric inputs use --npy")
    model = _load_model(args.model)
    vocabulary = Vocabulary.load(args.vocab)
    embeddings = None
    starts_with_embedding = any(type(l).__name__ == "Embedding" for l in model.layers[:1])
    if args.embeddings:
        embeddings = np.load(args.embeddings, allow_pickle=False)
        if embeddings.ndim != 2 or embeddings.shape[0] < len(vocabulary):
            raise CLIError(f"{args.embeddings}: expected a (vocabulary size >= {len(vocabulary)}, dim) "
                           f"matrix, got shape {embeddings.shape}")
        if model.input_shape[-1] != embeddings.shape[1]:
            raise CLIError(f"{args.model} takes {model.input_shape[-1]} features but {args.embeddings} "
                           f"holds {embeddings.shape[1]}-dim vectors")
    elif not starts_with_embedding:
        raise CLIError(f"{args.model} takes vectors, not token ids: pass --embeddings (a .npy matrix)")
    if starts_with_embedding and model.layers[0].input_dim < len(vocabulary):
        raise CLIError(f"the vocabulary has {len(vocabulary)} entries but the model's Embedding only "
                       f"{model.layers[0].input_dim}: they do not belong together")
    n_out = model.output_shape[-1]
    names = args.classes.split(",") if args.classes else [str(i) for i in range(n_out)]
    if len(names) != n_out:
        raise CLIError(f"--classes names {len(names)} classes but the model has {n_out} outputs")
    return TextModel(model, vocabulary, Tokenizer(), embeddings, names)


def _load_model(path):
    from .io import load_model
    return load_model(path)


# ----------------------------------------------------------------------------- input / output

def _read_sentences(args) -> List[str]:
    if args.text is not None:
        if not args.text.strip():
            raise CLIError("the text is empty: give a sentence to explain")
        return [args.text]
    if args.input:
        try:
            with open(args.input, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise CLIError(f"cannot read --input {args.input}: {err}") from None
    else:
        if sys.stdin is None or sys.stdin.isatty():
            raise CLIError("no text given: pass a sentence, --input FILE, or pipe sentences on stdin")
        lines = sys.stdin.read().splitlines()
    sentences = [line for line in lines if line.strip()]
    if not sentences:
        raise CLIError("no sentences in the input (only empty lines)")
    return sentences


def _check_output_paths(args):
    for opt in ("json", "html", "png", "out"):
        path = getattr(args, opt, None)
        if path:
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(folder):
                raise CLIError(f"--{opt} {path}: the folder {folder} does not exist")


class Progress:
    """A one-line progress report on stderr for long inputs."""

    def __init__(self, total: int, enabled: bool, stream: TextIO = sys.stderr):
        self.total, self.enabled, self.stream, self.done = total, enabled, stream, 0
        self.t0 = time.perf_counter()
        self.last = 0.0

    def update(self, n: int):
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self.last > 0.5 or self.done == self.total):
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            end = "\n" if self.done == self.total else ""
            self.stream.write(f"\rexplaining: {self.done}/{self.total} sentences "
                              f"({100 * self.done // self.total}%, {rate:.0f}/s){end}")
            self.stream.flush()


def _resolve_target(target: Optional[str], names: List[str]) -> Optional[int]:
    if target is None:
        return None
    if target.lstrip("-").isdigit():
        t = int(target)
        if not 0 <= t < len(names):
            raise CLIError(f"--target {t} is out of range: classes are 0..{len(names) - 1} ({', '.join(names)})")
        return t
    lowered = [n.lower() for n in names]
    if target.lower() not in lowered:
        raise CLIError(f"unknown class {target!r}: classes are {', '.join(names)}")
    return lowered.index(target.lower())


# ----------------------------------------------------------------------------- commands

def _explain_kwargs(args) -> dict:
    return dict(eps=args.eps, bias_factor=args.bias_factor, rule=args.rule, method=args.method,
                dtype="float64" if args.float64 else "float32")


def _explain_text(args) -> int:
    from .explainer import explain
    from .visualize import ansi_color_supported, ansi_heatmap

    sentences = _read_sentences(args)
    _check_output_paths(args)
    tm = _load_text_model(args)
    target = _resolve_target(args.target, tm.class_names)

    tokenized = [tm.tokenizer.tokenize(s) for s in sentences]
    empty = [i for i, t in enumerate(tokenized) if not t]
    if empty:
        raise CLIError(f"sentence {empty[0] + 1} has no tokens after tokenization: {sentences[empty[0]]!r}")
    results: List[Optional[dict]] = [None] * len(sentences)
    progress = Progress(len(sentences), enabled=len(sentences) > 1 and not args.quiet)
    chunk = max(4 * args.batch_size, _CHUNK)
    with (open(args.json, "w", encoding="utf-8") if args.json else _NoFile()) as json_file:
        # Input-order chunks (so JSON lines are written as they are done); inside a chunk, sentences
        # of equal length are explained together: no padding, so nothing depends on the batch.
        for start in range(0, len(sentences), chunk):
            indices = sorted(range(start, min(start + chunk, len(sentences))), key=lambda i: len(tokenized[i]))
            for group in _equal_length_groups(indices, tokenized, args.batch_size):
                encoded = [tm.encode(tokenized[j]) for j in group]
                e = explain(tm.model, np.concatenate([x for x, _ in encoded]), target, **_explain_kwargs(args))
                for k, j in enumerate(group):
                    results[j] = _record(sentences[j], tokenized[j], encoded[k][1], e, k, tm.class_names, args)
                progress.update(len(group))
            for r in results[start:start + chunk]:
                json_file.write(json.dumps(r) + "\n")
            json_file.flush()

    color = ansi_color_supported(sys.stdout) and not args.no_color
    for r in results:
        if r["oov_tokens"] and len(r["oov_tokens"]) == len(r["tokens"]):
            print(f"{PROG}: warning: every word of {r['text']!r} is unknown to the vocabulary; "
                  "the explanation is of the unknown token only", file=sys.stderr)
    if not args.quiet and not (args.json and len(results) > 1):
        for r in results:
            _print_record(r, color, ansi_heatmap)
    _write_figures(args, results)
    return 0


class _NoFile:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, _):
        pass

    def flush(self):
        pass


def _equal_length_groups(indices, tokenized, batch_size):
    group: List[int] = []
    for j in indices:
        if group and (len(tokenized[j]) != len(tokenized[group[0]]) or len(group) == batch_size):
            yield group
            group = []
        group.append(j)
    if group:
        yield group


def _record(text, tokens, oov, e, k, names, args) -> dict:
    scores = e.scores[k]
    pred = int(np.argmax(scores))
    return {"text": text, "tokens": tokens, "relevance": [float(v) for v in e.word_relevance[k]],
            "scores": {n: float(s) for n, s in zip(names, scores)}, "prediction": names[pred],
            "target": names[int(e.target[k])], "target_index": int(e.target[k]),
            "oov_tokens": [t for t, o in zip(tokens, oov) if o], "method": args.method,
            "rule": args.rule if args.method == "lrp" else None,
            "eps": args.eps, "bias_factor": args.bias_factor}


def _print_record(r, color, ansi_heatmap):
    scores = ", ".join(f"{n} {s:+.3f}" for n, s in r["scores"].items())
    print(f"prediction: {r['prediction']}   scores: {scores}")
    what = "relevance" if r["method"] == "lrp" else r["method"].upper()
    print(f"{what} for {r['target']}:")
    marked = [t + ("*" if t in r["oov_tokens"] else "") for t in r["tokens"]]
    print("  " + ansi_heatmap(marked, r["relevance"], color=color, show_scores=True))
    if r["oov_tokens"]:
        print(f"  (* unknown to the vocabulary: {', '.join(r['oov_tokens'])})")


def _write_figures(args, results):
    from .visualize import html_page, plot_word_heatmap, save_png

    if args.html:
        html_page([(r["tokens"], r["relevance"]) for r in results], scale="shared",
                  titles=[f"{r['text']}  —  prediction {r['prediction']}, relevance for {r['target']}"
                          for r in results], path=args.html)
    if args.png:
        r = results[0]
        fig = plot_word_heatmap(r["tokens"], r["relevance"],
                                title=f"prediction {r['prediction']}, relevance for {r['target']}")
        save_png(fig, args.png)
        if len(results) > 1:
            print(f"{PROG}: note: --png shows the first sentence; use --html for all", file=sys.stderr)


def _explain_numeric(args) -> int:
    from .explainer import explain
    from .visualize import plot_time_feature_heatmap, save_png

    if args.model is None:
        raise CLIError("--npy needs --model (a time-series model taking (batch, time, features))")
    _check_output_paths(args)
    try:
        x = np.load(args.npy, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise CLIError(f"cannot read --npy {args.npy}: {err}") from None
    if x.ndim == 2:
        x = x[None]
    model = _load_model(args.model)
    names = args.classes.split(",") if args.classes else [str(i) for i in range(model.output_shape[-1])]
    target = _resolve_target(args.target, names)
    e = explain(model, x, target, batch_size=args.batch_size, **_explain_kwargs(args))
    out = args.out or os.path.splitext(args.npy)[0] + "_relevance.npy"
    np.save(out, e.relevance)
    print(f"relevance {e.relevance.shape} written to {out}")
    for k in range(min(len(x), 5)):
        print(f"sample {k}: scores {np.array2string(e.scores[k], precision=3)}, target {e.target[k]}")
    if args.png:
        fig = plot_time_feature_heatmap(e.relevance[0], title=f"relevance for output {e.target[0]} (sample 0)")
        save_png(fig, args.png)
        print(f"heatmap of sample 0 written to {args.png}")
    return 0


# ----------------------------------------------------------------------------- entry point

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Explain Keras LSTM/GRU predictions with LRP.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("explain", help="explain text (or --npy sequences) with a model",
                       description="Explain sentences with the shipped SST model or your own.")
    p.add_argument("text", nargs="?", help="a sentence; without it, sentences are read from --input or stdin")
    p.add_argument("--input", help="file with one sentence per line")
    p.add_argument("--model", help="a .keras or .h5 model (default: the shipped SST-5 bi-LSTM)")
    p.add_argument("--shipped", default="sst5", choices=["sst5", "sst2"], help="which shipped model (default sst5)")
    p.add_argument("--vocab", help="vocabulary JSON for --model")
    p.add_argument("--embeddings", help="embedding matrix .npy, when --model takes vectors")
    p.add_argument("--classes", help="comma-separated class names for --model")
    p.add_argument("--target", help="class index or name to explain (default: the predicted class)")
    p.add_argument("--eps", type=float, default=1e-3, help="epsilon-rule stabiliser (default 0.001)")
    p.add_argument("--bias-factor", type=float, default=0.0, help="bias share, 0 (default) to 1")
    p.add_argument("--rule", default="all", choices=["all", "half", "prop"], help="gate rule (default all)")
    p.add_argument("--method", default="lrp", choices=["lrp", "gi", "sa"],
                   help="lrp (default), gi = gradient x input, sa = sensitivity analysis")
    p.add_argument("--float64", action="store_true", help="compute in float64")
    p.add_argument("--json", help="write JSON lines (one per sentence, in input order) to this file")
    p.add_argument("--html", help="write an HTML heatmap page to this file")
    p.add_argument("--png", help="write a PNG heatmap to this file")
    p.add_argument("--npy", help="explain numeric sequences from this .npy (batch, time, features)")
    p.add_argument("--out", help="with --npy: where to write the relevance .npy")
    p.add_argument("--batch-size", type=int, default=256, help="sentences per batch (default 256)")
    p.add_argument("--no-color", action="store_true", help="no ANSI colours")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks")
    from .evaluate import add_evaluate_parser
    add_evaluate_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if not args.debug:
            _start_tensorflow_quietly()
        if args.command == "evaluate":
            from .evaluate import run_evaluate
            return run_evaluate(args)
        if args.batch_size < 1:
            raise CLIError("--batch-size must be >= 1")
        if args.npy:
            return _explain_numeric(args)
        return _explain_text(args)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted (JSON lines written so far are kept)", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every error becomes one readable line
        if args.debug:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2 if isinstance(err, CLIError) else 1


if __name__ == "__main__":
    sys.exit(main())
