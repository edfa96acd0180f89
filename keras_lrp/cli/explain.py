"""The ``explain`` command: text with the shipped SST model or a user's model, or numeric
sequences (``--npy``).

:func:`prepare_explain` does everything that needs no TensorFlow (option checks, opening the
input and reading its first lines, the vocabulary and the embeddings, opening the outputs);
:func:`run_explain` loads the model and explains.

Text is streamed: sentences are read, explained and written a chunk at a time, so memory stays
flat in the number of lines. ``--json`` lines are written as each chunk is done; ``--html``, which
colours every sentence on one shared scale, spools the sentences to a temporary file and writes
the page from it at the end; ``--png`` keeps the first sentence.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import stat
import sys
import tempfile
import warnings
from dataclasses import dataclass
from typing import IO, Iterator, List, NamedTuple, Optional

import numpy as np

from ..npy import load_npy
from ..quiet import SummableWarning
from . import PROG, UsageError
from .method_options import (check_method_options, load_baseline_file, method_options, recorded_options,
                             unknown_word_vector)
from ..safe_io import printable, quote
from .outputs import Outputs

__all__ = ["prepare_explain", "run_explain", "ExplainJob", "TextModel", "Sentence", "SentenceSource"]


class Sentence(NamedTuple):
    """One sentence to explain and the input line it is on (1-based)."""

    line: int
    text: str


class SentenceSource:
    """The sentences to explain, one per line of the argument, ``--input FILE`` or stdin (empty
    lines skipped), read lazily. Each line is decoded as UTF-8 when it is read: a line that is not
    is a usage error naming it. The first two sentences are read here, so an empty input is
    refused before any work and :attr:`single` says whether there is exactly one."""

    def __init__(self, args: argparse.Namespace):
        self.file: Optional[IO[bytes]] = None
        self.total_lines: Optional[int] = None      # known for the argument and a regular --input file
        self.lines_read = 0
        if args.text is not None:
            if not args.text.strip():
                raise UsageError("the text is empty: give a sentence to explain")
            self.name, self.total_lines, lines = "the sentence", 1, iter([args.text])
        elif args.input:
            self.name = f"--input {args.input}"
            try:
                self.file = open(args.input, "rb")
                if stat.S_ISREG(os.fstat(self.file.fileno()).st_mode):
                    self.total_lines = _count_lines(self.file)
            except OSError as err:
                self.close()
                raise UsageError(f"cannot read {self.name}: {err.strerror or err}") from None
            lines = self.file
        else:
            if sys.stdin is None or sys.stdin.isatty():
                raise UsageError("no text given: pass a sentence, --input FILE, or pipe sentences on stdin")
            self.name, lines = "stdin", getattr(sys.stdin, "buffer", sys.stdin)
        self._sentences = self._decoded(lines)
        try:
            self._ahead = list(itertools.islice(self._sentences, 2))
        except BaseException:
            self.close()
            raise
        if not self._ahead:
            self.close()
            raise UsageError("no sentences in the input (only empty lines)")
        self.single = len(self._ahead) == 1

    def where(self, sentence: Sentence) -> str:
        return self.name if self.name == "the sentence" else f"line {sentence.line} of {self.name}"

    def _decoded(self, lines) -> Iterator[Sentence]:
        for number, raw in enumerate(lines, start=1):
            try:
                if isinstance(raw, bytes):
                    text = raw.decode("utf-8")
                else:       # a text stream (surrogateescape puts undecodable bytes in as surrogates)
                    text = raw
                    text.encode("utf-8")
            except UnicodeError as err:
                raise UsageError(f"{self.name}, line {number}: not UTF-8 text ({err.reason}); save it as "
                                 "UTF-8") from None
            self.lines_read = number
            for part in text.splitlines():
                if part.strip():
                    yield Sentence(number, part)

    def chunks(self, size: int) -> Iterator[List[Sentence]]:
        """The sentences, ``size`` at a time, in input order (once)."""
        sentences = itertools.chain(self._ahead, self._sentences)
        self._ahead = []
        while True:
            chunk = list(itertools.islice(sentences, size))
            if not chunk:
                return
            yield chunk

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _count_lines(f: IO[bytes]) -> int:
    """Lines of a file (a last line without a newline counts); leaves it at its start."""
    count, last = 0, b"\n"
    for block in iter(lambda: f.read(1 << 20), b""):
        count += block.count(b"\n")
        last = block[-1:]
    f.seek(0)
    return count + (last != b"\n")


@dataclass
class ExplainJob:
    """A checked ``explain`` command line, ready to run."""

    args: argparse.Namespace
    outputs: Outputs
    source: Optional[SentenceSource] = None        # text mode
    vocabulary: object = None                      # --vocab (with --model), else None
    tokenizer: object = None
    embeddings: Optional[np.ndarray] = None        # --embeddings
    x: Optional[np.ndarray] = None                 # --npy: (batch, time, features)
    baseline_file: Optional[np.ndarray] = None     # --baseline FILE.npy
    json_lines: int = 0                            # JSON lines written so far


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
    """Check the options, open the input and the outputs, without importing TensorFlow.

    Raises:
        UsageError, OutputError: the command line is wrong (exit code 2).
        OSError, ValueError: an input file cannot be read (exit code 1).
    """
    check_method_options(args)
    baseline_file = load_baseline_file(args)
    if args.npy:
        if args.model is None:
            raise UsageError("--npy needs --model (a time-series model taking (batch, time, features))")
        for opt in ("text", "input", "vocab", "embeddings", "json", "html", "padding", "truncating", "maxlen"):
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
        return ExplainJob(args, Outputs({"out": out, "png": args.png}), x=x, baseline_file=baseline_file)
    if args.out:
        raise UsageError("--out is for --npy; for text use --json, --html or --png")
    if args.model is None and (args.padding or args.truncating or args.maxlen):
        raise UsageError("--padding/--truncating/--maxlen are for --model (the shipped model takes any length)")
    if args.model is None and (args.vocab or args.embeddings or args.classes):
        raise UsageError("--vocab/--embeddings/--classes need --model (the shipped model has its own)")
    if args.text is not None and args.input:
        raise UsageError("give either a sentence or --input FILE, not both")
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
    source = SentenceSource(args)
    try:
        outputs = Outputs({"json": args.json, "html": args.html, "png": args.png})
    except BaseException:
        source.close()
        raise
    return ExplainJob(args, outputs, source=source, vocabulary=vocabulary, tokenizer=tokenizer,
                      embeddings=embeddings, baseline_file=baseline_file)


def _option(name: str) -> str:
    return "a sentence" if name == "text" else "--" + name.replace("_", "-")


def _resolve_target(target: Optional[str], names: List[str]) -> Optional[int]:
    if target is None:
        return None
    if target.isascii() and target.lstrip("-").isdigit():
        t = int(target)
        if not 0 <= t < len(names):
            raise UsageError(f"--target {t} is out of range: classes are 0..{len(names) - 1} "
                             f"({printable(', '.join(names))})")
        return t
    lowered = [n.lower() for n in names]
    if target.lower() not in lowered:
        raise UsageError(f"unknown class {quote(target)} for --target: classes are {printable(', '.join(names))}")
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
    finally:
        if job.source is not None:
            job.source.close()
    return code


def _keep_json_lines(job: ExplainJob) -> None:
    if "json" in job.outputs and job.json_lines > 0:
        job.outputs.commit(["json"])
        print(printable(f"{PROG}: kept the {job.json_lines} finished JSON lines in {job.outputs.path('json')}"),
              file=sys.stderr)
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
    layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    first = type(layers[0]).__name__ if layers else ""
    if first == "TextVectorization":
        if job.vocabulary is not None or job.embeddings is not None:
            raise UsageError(f"{args.model} starts with TextVectorization, which tokenizes and looks up words itself: "
                             "leave out --vocab and --embeddings")
        return TextModel(model, None, None, None, _class_names(args, model.output_shape[-1]))
    if job.vocabulary is None:
        raise UsageError(f"{args.model} takes token ids: pass --vocab (the tokenizer or vocabulary it was trained with, "
                         "e.g. tokenizer.to_json()); for numeric inputs use --npy")
    if job.embeddings is not None:
        if model.input_shape[-1] != job.embeddings.shape[1]:
            raise UsageError(f"{args.model} takes {model.input_shape[-1]} features but {args.embeddings} "
                             f"holds {job.embeddings.shape[1]}-dim vectors")
    elif first != "Embedding":
        raise UsageError(f"{args.model} takes vectors, not token ids: pass --embeddings (a .npy matrix)")
    if first == "Embedding" and layers[0].input_dim < len(job.vocabulary):
        raise UsageError(f"the vocabulary has {len(job.vocabulary)} entries but the model's Embedding only "
                         f"{model.layers[0].input_dim}: they do not belong together")
    return TextModel(model, job.vocabulary, job.tokenizer, job.embeddings,
                     _class_names(args, model.output_shape[-1]))


def text_front_of(args, text_model: TextModel, max_length: int):
    """The :class:`keras_lrp.text_explainer.TextFront` of the command: the model's tokenizer and
    word index, ``--maxlen`` / ``--padding`` / ``--truncating`` (default: the model's own length,
    padded and cut at the front, as ``pad_sequences``)."""
    from ..text_explainer import text_front

    return text_front(text_model, maxlen=args.maxlen, padding=args.padding, truncating=args.truncating,
                      max_length=max_length)


def explain_kwargs(args, options: Optional[dict]) -> dict:
    """The settings of :func:`keras_lrp.explain` (and the Ray engine's) for the command line;
    ``options``: its ``method_options`` (:func:`.method_options.method_options`)."""
    return dict(eps=args.eps, bias_factor=args.bias_factor, rule=args.rule, method=args.method,
                dtype="float64" if args.float64 else "float32", method_options=options)


def max_length_of(args) -> int:
    """``--max-length``, or keras_lrp's default (imports TensorFlow)."""
    from ..explainer import MAX_LENGTH

    return args.max_length if args.max_length is not None else MAX_LENGTH


def encode_sentence(front, source: SentenceSource, sentence: Sentence, allow_empty: bool = False):
    """``sentence`` encoded by ``front`` (a :class:`keras_lrp.text_explainer.Encoded`), tokenizing no
    further than ``--max-length`` tokens: a longer sentence is a ValueError naming its line and
    ``--max-length``, one without tokens a UsageError naming its line (unless ``allow_empty``)."""
    from ..text import TooManyTokensError
    from ..text_explainer import _dropped_note

    try:
        encoded = front.encode(sentence.text)
    except TooManyTokensError:
        raise ValueError(f"{source.where(sentence)} has more than {front.max_length:,} tokens (--max-length "
                         f"{front.max_length:,}); memory grows with tokens x units: shorten it, or raise "
                         "--max-length if this machine has the memory") from None
    if encoded.words == 0 and not allow_empty:
        raise UsageError(f"{source.where(sentence)} has no tokens after tokenization{_dropped_note(encoded)}: "
                         f"{quote(sentence.text)}")
    return encoded


def _explain_text(job: ExplainJob, chunk: int) -> int:
    from ..text_explainer import explain_encoded
    from .progress import Progress

    args, source = job.args, job.source
    tm = _load_text_model(job)
    target = _resolve_target(args.target, tm.class_names)
    front = text_front_of(args, tm, max_length_of(args))
    options = method_options(args, job.baseline_file, lambda: unknown_word_vector(tm, front))
    if args.engine == "ray":
        from .corpus import explain_text_corpus
        return explain_text_corpus(job, tm, front, target, options)
    progress = Progress(source.total_lines, enabled=not args.quiet and not source.single)
    sink = _TextSink(job, show=not args.quiet and not (args.json and not source.single), progress=progress)
    try:
        # Input-order chunks, so that JSON lines are written as they are done. The sentences of one
        # length are explained together: with no padding, nothing depends on the other sentences.
        for sentences in source.chunks(max(4 * args.batch_size, chunk)):
            encoded = [encode_sentence(front, source, s) for s in sentences]   # before any explaining
            front.warn(encoded)
            targets = None if target is None else np.full(len(encoded), target, dtype=np.int32)
            e = explain_encoded(front, encoded, targets, [s.text for s in sentences], batch_size=args.batch_size,
                                verbose=False, **explain_kwargs(args, options))
            sink.add(_records(e, args, [x.dropped for x in encoded]))
            progress.update(source.lines_read, sink.n)
        progress.close()
        sink.finish()
    finally:
        sink.close()
    job.outputs.commit()
    n = sink.n
    what = f"{n} explanation{'s' if n != 1 else ''}"
    _report(args, [f"wrote {what} to {job.outputs.path('json')}" if "json" in job.outputs else None,
                   f"wrote {what} to {job.outputs.path('html')}" if "html" in job.outputs else None,
                   f"wrote the heatmap of sentence 1 to {job.outputs.path('png')}" if "png" in job.outputs else None])
    if "png" in job.outputs and n > 1:
        print(f"{PROG}: note: --png shows the first sentence; use --html for all", file=sys.stderr)
    return 0


class AllUnknownWarning(SummableWarning, UserWarning):
    """Sentences whose every word is unknown to the vocabulary."""

    def __init__(self, texts: List[str]):
        self.texts = list(texts)
        n = len(self.texts)
        shown = ", ".join(quote(t, 40) for t in self.texts[:3]) + (", ..." if n > 3 else "")
        super().__init__(f"every word of {n} sentence{'s' if n != 1 else ''} is unknown to the vocabulary "
                         f"({shown}); {'their explanations are' if n != 1 else 'its explanation is'} of the "
                         "unknown token only")

    def cause(self):
        return "all unknown"

    @classmethod
    def merge(cls, items):
        return cls([t for w in items for t in w.texts])


class _TextSink:
    """Where explained sentences go, a chunk at a time: ``--json`` lines (written at once), the
    terminal, ``--html`` (spooled to a temporary file with the running largest ``|relevance|``;
    :meth:`finish` writes the page from it on that shared scale), ``--png`` (the first sentence)."""

    def __init__(self, job: ExplainJob, show: bool, progress):
        from ..visualize import ansi_color_supported

        self.job, self.show, self.progress = job, show, progress
        self.color = ansi_color_supported(sys.stdout) and not job.args.no_color
        self.json = job.outputs.open("json") if "json" in job.outputs else None
        self.spool = tempfile.TemporaryFile("w+", encoding="utf-8") if "html" in job.outputs else None
        self.scale = 0.0
        self.first: Optional[dict] = None
        self.n = 0

    def add(self, records: List[dict]) -> None:
        from ..visualize import ansi_heatmap

        self.progress.clear()
        unknown = [r["text"] for r in records if r["oov_tokens"] and len(r["oov_tokens"]) == len(r["tokens"])]
        if unknown:
            warnings.warn(AllUnknownWarning(unknown))
        for r in records:
            if self.show:
                _print_record(r, self.color, ansi_heatmap)
        if self.json is not None:
            self.json.write("".join(json.dumps(r) + "\n" for r in records))
            self.json.flush()
            self.job.json_lines += len(records)
        if self.spool is not None:
            for r in records:
                self.spool.write(json.dumps([r["tokens"], r["relevance"], _title(r)]) + "\n")
                if r["relevance"]:
                    self.scale = max(self.scale, float(np.max(np.abs(r["relevance"]))))
        if self.first is None:
            self.first = records[0]
        self.n += len(records)

    def finish(self) -> None:
        from ..visualize import plot_word_heatmap, write_html_page

        outputs = self.job.outputs
        if self.spool is not None:
            self.spool.seek(0)
            pages, titles = itertools.tee(json.loads(line) for line in self.spool)
            with outputs.open("html") as f:
                write_html_page(f, ((p[0], p[1]) for p in pages), self.scale or None, titles=(t[2] for t in titles))
        if "png" in outputs:
            r = self.first
            fig = plot_word_heatmap(r["tokens"], r["relevance"],
                                    title=printable(f"prediction {r['prediction']}, relevance for {r['target']}"))
            with outputs.open("png", "wb") as f:
                fig.savefig(f, format="png", dpi=150)

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()


def _title(r: dict) -> str:
    return printable(f"{r['text']}  —  prediction {r['prediction']}, relevance for {r['target']}")


def _report(args, lines) -> None:
    if not args.quiet:
        for line in lines:
            if line:
                print(printable(line), file=sys.stderr)


def _records(e, args, dropped: List[List[str]]) -> List[dict]:
    """The JSON lines of ``explain_encoded``'s Explanation ``e``, one per text (``dropped``: the words
    the tokenizer left out of each)."""
    word_relevance = e.word_relevance      # (batch, time), summed once
    return [record(e.texts[k], tokens, word_relevance[k, :len(tokens)].tolist(), e.scores[k], int(e.target[k]),
                   e.oov[k], dropped[k], e.class_names, args)
            for k, tokens in enumerate(e.tokens)]


def record(text: str, tokens: List[str], relevance: List[float], scores, target: int, oov, dropped: List[str],
           names: List[str], args) -> dict:
    """One JSON line of ``--json`` (and of ``--engine ray``'s ``out.jsonl``): the sentence, its tokens
    (padding shown as ``<pad>``), the relevance of each, the scores by class name, the prediction,
    the explained class (name and index), the unknown words, the words the tokenizer left out, and
    the settings (``method_options``: :func:`.method_options.recorded_options`)."""
    pred = int(np.argmax(scores))
    return {"text": text, "tokens": tokens, "relevance": relevance,
            "scores": {n: float(s) for n, s in zip(names, scores)}, "prediction": names[pred],
            "target": names[target], "target_index": target,
            "oov_tokens": [t for t, o in zip(tokens, oov) if o], "dropped_tokens": list(dropped),
            "method": args.method, "rule": args.rule if args.method == "lrp" else None,
            "method_options": recorded_options(args), "eps": args.eps, "bias_factor": args.bias_factor}


def _print_record(r, color, ansi_heatmap):
    scores = ", ".join(f"{printable(n)} {s:+.3f}" for n, s in r["scores"].items())
    print(f"prediction: {printable(r['prediction'])}   scores: {scores}")
    what = "relevance" if r["method"] == "lrp" else r["method"].upper()
    print(f"{what} for {printable(r['target'])}:")
    unknown = set(r["oov_tokens"])
    print("  " + ansi_heatmap(r["tokens"], r["relevance"], color=color, show_scores=True,
                              oov=np.array([t in unknown for t in r["tokens"]], dtype=bool)))
    if r["oov_tokens"]:
        print(f"  (* unknown to the vocabulary: {printable(', '.join(r['oov_tokens']))})")
    if r["dropped_tokens"]:
        print(f"  (left out, not in the tokenizer's word index: {printable(', '.join(r['dropped_tokens']))})")


_NPY_SHOWN = 10    # samples whose scores --npy prints (the rest are counted)


def _explain_numeric(job: ExplainJob) -> int:
    import keras_lrp

    from ..visualize import plot_time_feature_heatmap

    args, x = job.args, job.x
    max_length = max_length_of(args)
    if x.shape[1] > max_length:
        raise ValueError(f"--npy {args.npy}: {x.shape[1]:,} time steps, more than --max-length {max_length:,}; "
                         "memory grows with time x units: shorten the sequences, or raise --max-length if "
                         "this machine has the memory")
    model = _load_model(args.model)
    target = _resolve_target(args.target, _class_names(args, model.output_shape[-1]))
    e = keras_lrp.explain(model, x, target, batch_size=args.batch_size, max_length=max_length,
                          **explain_kwargs(args, method_options(args, job.baseline_file)))
    with job.outputs.open("out", "wb") as f:
        np.save(f, e.relevance)
    if "png" in job.outputs:
        fig = plot_time_feature_heatmap(e.relevance[0], title=f"relevance for output {e.target[0]} (sample 0)")
        with job.outputs.open("png", "wb") as f:
            fig.savefig(f, format="png", dpi=150)
    job.outputs.commit()
    if not args.quiet:
        shown = len(x) if len(x) <= _NPY_SHOWN + 1 else _NPY_SHOWN
        for k in range(shown):
            print(f"sample {k}: scores {np.array2string(e.scores[k], precision=3)}, target {e.target[k]}")
        if shown < len(x):
            print(f"... and {len(x) - shown} more samples (all {len(x)} are in {job.outputs.path('out')})")
    _report(args, [f"wrote the relevance {e.relevance.shape} of {len(x)} sample{'s' if len(x) != 1 else ''} "
                   f"to {job.outputs.path('out')}",
                   f"wrote the heatmap of sample 0 to {job.outputs.path('png')}" if "png" in job.outputs else None])
    return 0
