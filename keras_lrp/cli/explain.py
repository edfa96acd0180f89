"""The ``explain`` command: text with the shipped SST model or a user's model, or numeric
sequences (``--npy``).

:func:`prepare_explain` does everything that needs no TensorFlow (option checks, reading the
sentences, the vocabulary and the embeddings, opening the outputs); :func:`run_explain` loads the
model and explains.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from ..npy import load_npy
from . import PROG, UsageError
from .outputs import Outputs

__all__ = ["prepare_explain", "run_explain", "ExplainJob", "TextModel"]


@dataclass
class ExplainJob:
    """A checked ``explain`` command line, ready to run."""

    args: argparse.Namespace
    outputs: Outputs
    sentences: Optional[List[str]] = None          # text mode
    vocabulary: object = None                      # --vocab (with --model), else None
    tokenizer: object = None
    embeddings: Optional[np.ndarray] = None        # --embeddings
    x: Optional[np.ndarray] = None                 # --npy: (batch, time, features)
    oov_note: List[str] = field(default_factory=list)


@dataclass
class TextModel:
    """What the CLI needs to explain text: a model, a vocabulary, optionally an embedding matrix
    (the model object :func:`keras_lrp.explain_text` takes)."""

    model: object
    vocabulary: object
    tokenizer: object
    embeddings: Optional[np.ndarray]      # None when the model starts with its own Embedding
    class_names: List[str]


# ---------------------------------------------------------------------------------------- checks

def prepare_explain(args: argparse.Namespace) -> ExplainJob:
    """Check the options, read the inputs and open the outputs, without importing TensorFlow.

    Raises:
        UsageError, OutputError: the command line is wrong (exit code 2).
        OSError, ValueError: an input file cannot be read (exit code 1).
    """
    if args.npy:
        if args.model is None:
            raise UsageError("--npy needs --model (a time-series model taking (batch, time, features))")
        for opt in ("text", "input", "vocab", "embeddings", "json", "html"):
            if getattr(args, opt):
                raise UsageError(f"--npy explains numeric sequences; {_option(opt)} is for text")
        out = args.out or os.path.splitext(args.npy)[0] + "_relevance.npy"
        try:
            x = load_npy(args.npy, name=f"--npy {args.npy}")
        except OSError as err:
            raise OSError(f"cannot read --npy {args.npy}: {err}") from None
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or not np.issubdtype(x.dtype, np.number):
            raise ValueError(f"--npy {args.npy}: expected numbers of shape (batch, time, features) or "
                             f"(time, features), got {x.dtype} {x.shape}")
        return ExplainJob(args, Outputs({"out": out, "png": args.png}), x=x)
    if args.out:
        raise UsageError("--out is for --npy; for text use --json, --html or --png")
    if args.model is None and (args.vocab or args.embeddings or args.classes):
        raise UsageError("--vocab/--embeddings/--classes need --model (the shipped model has its own)")
    if args.model is not None and not args.vocab:
        raise UsageError("--model with text needs --vocab (a vocabulary JSON); for numeric inputs use --npy")
    if args.text is not None and args.input:
        raise UsageError("give either a sentence or --input FILE, not both")
    sentences = _read_sentences(args)
    if args.model is None:
        from ..sst.pretrained import shipped_models_dir

        shipped_models_dir()     # fails now, naming where it looked, if the shipped models are missing
    vocabulary = tokenizer = embeddings = None
    if args.vocab:
        from .vocab import load_vocabulary

        loaded = load_vocabulary(args.vocab)
        vocabulary, tokenizer = loaded.vocabulary, loaded.tokenizer
    if args.embeddings:
        try:
            embeddings = load_npy(args.embeddings, name=f"--embeddings {args.embeddings}")
        except OSError as err:
            raise OSError(f"cannot read --embeddings {args.embeddings}: {err}") from None
        if embeddings.ndim != 2 or embeddings.shape[0] < len(vocabulary):
            raise ValueError(f"--embeddings {args.embeddings}: expected a (vocabulary size >= {len(vocabulary)}, "
                             f"dim) matrix, got shape {embeddings.shape}")
    outputs = Outputs({"json": args.json, "html": args.html, "png": args.png})
    return ExplainJob(args, outputs, sentences=sentences, vocabulary=vocabulary, tokenizer=tokenizer,
                      embeddings=embeddings)


def _option(name: str) -> str:
    return "a sentence" if name == "text" else "--" + name.replace("_", "-")


def _read_sentences(args) -> List[str]:
    if args.text is not None:
        if not args.text.strip():
            raise UsageError("the text is empty: give a sentence to explain")
        return [args.text]
    if args.input:
        try:
            with open(args.input, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"cannot read --input {args.input}: {err}") from None
    else:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("no text given: pass a sentence, --input FILE, or pipe sentences on stdin")
        lines = sys.stdin.read().splitlines()
    sentences = [line for line in lines if line.strip()]
    if not sentences:
        raise UsageError("no sentences in the input (only empty lines)")
    return sentences


def _resolve_target(target: Optional[str], names: List[str]) -> Optional[int]:
    if target is None:
        return None
    if target.lstrip("-").isdigit():
        t = int(target)
        if not 0 <= t < len(names):
            raise UsageError(f"--target {t} is out of range: classes are 0..{len(names) - 1} ({', '.join(names)})")
        return t
    lowered = [n.lower() for n in names]
    if target.lower() not in lowered:
        raise UsageError(f"unknown class {target!r}: classes are {', '.join(names)}")
    return lowered.index(target.lower())


def _class_names(args, n_out: int) -> List[str]:
    names = args.classes.split(",") if args.classes else [str(i) for i in range(n_out)]
    if len(names) != n_out:
        raise UsageError(f"--classes names {len(names)} classes but the model has {n_out} outputs")
    return names


# ---------------------------------------------------------------------------------------- running

def run_explain(job: ExplainJob, chunk: int = 1024) -> int:
    """Explain; on success move the outputs into place, on failure remove them (an interrupted
    run keeps the finished JSON lines). Returns the exit code."""
    try:
        code = _explain_numeric(job) if job.x is not None else _explain_text(job, chunk)
    except KeyboardInterrupt:
        _keep_json_lines(job)
        raise
    except BaseException:
        job.outputs.discard()
        raise
    return code


def _keep_json_lines(job: ExplainJob) -> None:
    if "json" in job.outputs and os.path.getsize(job.outputs.tmp("json")) > 0:
        job.outputs.commit(["json"])
        with open(job.outputs.path("json"), encoding="utf-8") as f:
            n = sum(1 for _ in f)
        print(f"{PROG}: kept the {n} finished JSON lines in {job.outputs.path('json')}", file=sys.stderr)
    job.outputs.discard()


def _load_model(path):
    from ..io import load_model
    return load_model(path)


def _load_text_model(job: ExplainJob) -> TextModel:
    args = job.args
    if args.model is None:
        from ..sst.pretrained import load_pretrained

        bundle = load_pretrained(args.shipped)
        return TextModel(bundle.model, bundle.vocabulary, bundle.tokenizer, bundle.embeddings,
                         list(bundle.class_names))
    model = _load_model(args.model)
    starts_with_embedding = any(type(layer).__name__ == "Embedding" for layer in model.layers[:1])
    if job.embeddings is not None:
        if model.input_shape[-1] != job.embeddings.shape[1]:
            raise UsageError(f"{args.model} takes {model.input_shape[-1]} features but {args.embeddings} "
                             f"holds {job.embeddings.shape[1]}-dim vectors")
    elif not starts_with_embedding:
        raise UsageError(f"{args.model} takes vectors, not token ids: pass --embeddings (a .npy matrix)")
    if starts_with_embedding and model.layers[0].input_dim < len(job.vocabulary):
        raise UsageError(f"the vocabulary has {len(job.vocabulary)} entries but the model's Embedding only "
                         f"{model.layers[0].input_dim}: they do not belong together")
    return TextModel(model, job.vocabulary, job.tokenizer, job.embeddings,
                     _class_names(args, model.output_shape[-1]))


def _explain_kwargs(args) -> dict:
    return dict(eps=args.eps, bias_factor=args.bias_factor, rule=args.rule, method=args.method,
                dtype="float64" if args.float64 else "float32")


def _explain_text(job: ExplainJob, chunk: int) -> int:
    import keras_lrp

    from ..experiments._common import ProgressBar
    from ..visualize import ansi_color_supported, ansi_heatmap

    args, sentences = job.args, job.sentences
    tm = _load_text_model(job)
    target = _resolve_target(args.target, tm.class_names)
    if args.engine == "ray":
        from .corpus import explain_text_corpus
        return explain_text_corpus(job, tm, target)
    empty = next((i for i, s in enumerate(sentences) if not tm.tokenizer.tokenize(s)), None)
    if empty is not None:   # before any explaining; explain_text would say it chunk by chunk
        raise UsageError(f"sentence {empty + 1} has no tokens after tokenization: {sentences[empty]!r}")
    results: List[dict] = []
    bar = ProgressBar(len(sentences), "sentence", enabled=len(sentences) > 1 and not args.quiet)
    chunk = max(4 * args.batch_size, chunk)
    json_file = open(job.outputs.tmp("json"), "w", encoding="utf-8") if "json" in job.outputs else None
    try:
        # Input-order chunks, so that JSON lines are written as they are done. explain_text explains
        # the sentences of one length together, unpadded: nothing depends on the other sentences.
        for start in range(0, len(sentences), chunk):
            e = keras_lrp.explain_text(tm, sentences[start:start + chunk], target=target,
                                       batch_size=args.batch_size, verbose=False, **_explain_kwargs(args))
            records = [_record(e, k, args) for k in range(len(e.texts))]
            results.extend(records)
            bar.add(len(records))
            if json_file is not None:
                for r in records:
                    json_file.write(json.dumps(r) + "\n")
                json_file.flush()
    finally:
        if json_file is not None:
            json_file.close()

    color = ansi_color_supported(sys.stdout) and not args.no_color
    for r in results:
        if r["oov_tokens"] and len(r["oov_tokens"]) == len(r["tokens"]):
            print(f"{PROG}: warning: every word of {r['text']!r} is unknown to the vocabulary; "
                  "the explanation is of the unknown token only", file=sys.stderr)
    if not args.quiet and not (args.json and len(results) > 1):
        for r in results:
            _print_record(r, color, ansi_heatmap)
    _write_figures(job, results)
    job.outputs.commit()
    n = len(results)
    what = f"{n} explanation{'s' if n != 1 else ''}"
    _report(args, [f"wrote {what} to {job.outputs.path('json')}" if "json" in job.outputs else None,
                   f"wrote {what} to {job.outputs.path('html')}" if "html" in job.outputs else None,
                   f"wrote the heatmap of sentence 1 to {job.outputs.path('png')}" if "png" in job.outputs else None])
    if "png" in job.outputs and n > 1:
        print(f"{PROG}: note: --png shows the first sentence; use --html for all", file=sys.stderr)
    return 0


def _report(args, lines) -> None:
    if not args.quiet:
        for line in lines:
            if line:
                print(line, file=sys.stderr)


def _record(e, k: int, args) -> dict:
    """The JSON line of text ``k`` of ``explain_text``'s Explanation ``e``."""
    tokens, names, scores = e.tokens[k], e.class_names, e.scores[k]
    pred = int(np.argmax(scores))
    return {"text": e.texts[k], "tokens": tokens,
            "relevance": [float(v) for v in e.word_relevance[k][:len(tokens)]],
            "scores": {n: float(s) for n, s in zip(names, scores)}, "prediction": names[pred],
            "target": names[int(e.target[k])], "target_index": int(e.target[k]),
            "oov_tokens": [t for t, o in zip(tokens, e.oov[k]) if o], "method": args.method,
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


def _write_figures(job: ExplainJob, results):
    from ..visualize import html_page, plot_word_heatmap, save_png

    if "html" in job.outputs:
        html_page([(r["tokens"], r["relevance"]) for r in results], scale="shared",
                  titles=[f"{r['text']}  —  prediction {r['prediction']}, relevance for {r['target']}"
                          for r in results], path=job.outputs.tmp("html"))
    if "png" in job.outputs:
        r = results[0]
        fig = plot_word_heatmap(r["tokens"], r["relevance"],
                                title=f"prediction {r['prediction']}, relevance for {r['target']}")
        save_png(fig, job.outputs.tmp("png"))


def _explain_numeric(job: ExplainJob) -> int:
    import keras_lrp

    from ..visualize import plot_time_feature_heatmap, save_png

    args, x = job.args, job.x
    model = _load_model(args.model)
    target = _resolve_target(args.target, _class_names(args, model.output_shape[-1]))
    e = keras_lrp.explain(model, x, target, batch_size=args.batch_size, **_explain_kwargs(args))
    with open(job.outputs.tmp("out"), "wb") as f:
        np.save(f, e.relevance)
    if "png" in job.outputs:
        fig = plot_time_feature_heatmap(e.relevance[0], title=f"relevance for output {e.target[0]} (sample 0)")
        save_png(fig, job.outputs.tmp("png"))
    job.outputs.commit()
    if not args.quiet:
        for k in range(min(len(x), 5)):
            print(f"sample {k}: scores {np.array2string(e.scores[k], precision=3)}, target {e.target[k]}")
    _report(args, [f"wrote the relevance {e.relevance.shape} of {len(x)} sample{'s' if len(x) != 1 else ''} "
                   f"to {job.outputs.path('out')}",
                   f"wrote the heatmap of sample 0 to {job.outputs.path('png')}" if "png" in job.outputs else None])
    return 0
