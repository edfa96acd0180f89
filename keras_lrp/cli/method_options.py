"""``--steps``, ``--window``, ``--samples``, ``--seed`` and ``--baseline``: the options of the
baselines (:mod:`keras_lrp.baselines`) on the command line.

They are checked with the other options, before anything is read (an option of another method is a
usage error naming the method that takes it); a ``--baseline`` .npy file is read (never unpickled)
with the inputs; ``--baseline unk`` becomes the unknown word's embedding vector once the model is
loaded. The JSON lines record the options used (:func:`recorded_options`).
"""
from __future__ import annotations

import argparse
from typing import Callable, Optional

import numpy as np

from . import UsageError

__all__ = ["TAKEN_BY", "add_method_option_arguments", "check_method_options", "load_baseline_file",
           "method_options", "recorded_options", "unknown_word_vector"]

#: each flag and the methods that take it (the keys of keras_lrp.baselines.OPTIONS, without importing Keras)
TAKEN_BY = {"steps": ("ig",), "window": ("occlusion",), "samples": ("shapley",), "seed": ("shapley",),
            "baseline": ("ig", "occlusion", "shapley")}


def _samples(text: str):
    """An argparse ``type``: ``all`` or an integer >= 1."""
    if text == "all":
        return "all"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'all', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (or 'all'), got {value}")
    return value


def _baseline(text: str) -> str:
    """An argparse ``type``: ``zero``, ``unk``, a finite number, or a path ending in ``.npy``."""
    from ..experiments.evaluate import finite_float

    if text in ("zero", "unk") or text.lower().endswith(".npy"):
        return text
    try:
        float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected zero, unk, a number or a .npy file, got {text!r}") from None
    finite_float(text)
    return text


def add_method_option_arguments(p: argparse.ArgumentParser, int_at_least: Callable) -> None:
    """The flags, in their own group of ``explain --help``."""
    g = p.add_argument_group("options of --method ig / occlusion / shapley")
    g.add_argument("--steps", type=int_at_least(1), default=None,
                   help="ig: points on the straight path from the baseline to the input (default 32)")
    g.add_argument("--window", type=int_at_least(1), default=None,
                   help="occlusion: consecutive words (time steps) set to the baseline at once, sliding by one "
                        "(default 1)")
    g.add_argument("--samples", type=_samples, default=None, metavar="N|all",
                   help="shapley: sampled permutations of the words (default 32), or all: every permutation, "
                        "the exact Shapley values (at most 8 words)")
    g.add_argument("--seed", type=int_at_least(0), default=None, help="shapley: seed of the permutations (default 0)")
    g.add_argument("--baseline", type=_baseline, default=None, metavar="zero|unk|NUMBER|FILE.npy",
                   help="ig, occlusion, shapley: what a removed word's embedding vector (a time step's features "
                        "with --npy) becomes: zero (default), a number in every feature, unk (text: the embedding "
                        "of the vocabulary's unknown word, as word deletion's --replacement unk), or a .npy "
                        "array of shape (features,) or (time, features)")


def check_method_options(args) -> None:
    """Refuse a flag of another method, and ``--baseline unk`` without text (no file is read)."""
    for name, methods in TAKEN_BY.items():
        if getattr(args, name) is not None and args.method not in methods:
            takes = " / ".join(f"--method {m}" for m in methods)
            raise UsageError(f"--{name} is an option of {takes}, not of --method {args.method}")
    if args.baseline == "unk" and args.npy:
        raise UsageError("--baseline unk is the unknown word's embedding, for text; with --npy give zero, a number "
                         "or a .npy file")


def load_baseline_file(args) -> Optional[np.ndarray]:
    """The ``--baseline`` .npy array (loaded without pickle), or None when it is not a file."""
    from ..npy import load_npy

    if args.baseline is None or not args.baseline.lower().endswith(".npy"):
        return None
    name = f"--baseline {args.baseline}"
    try:
        array = load_npy(args.baseline, name=name)
    except OSError as err:
        raise OSError(f"cannot read {name}: {err}") from None
    if not np.issubdtype(array.dtype, np.number) or array.ndim not in (1, 2):
        raise ValueError(f"{name}: expected numbers of shape (features,) or (time, features), got {array.dtype} "
                         f"{array.shape}")
    return np.array(array)


def method_options(args, baseline_file: Optional[np.ndarray] = None,
                   unknown: Optional[Callable[[], np.ndarray]] = None) -> Optional[dict]:
    """The ``method_options`` of :func:`keras_lrp.explain` for the given flags (None when none is
    given); ``baseline_file``: the loaded ``--baseline`` .npy, ``unknown()``: the ``unk`` vector."""
    options = {name: getattr(args, name) for name in TAKEN_BY if getattr(args, name) is not None}
    spec = options.pop("baseline", None)
    if spec == "unk":
        options["baseline"] = unknown()
    elif baseline_file is not None:
        options["baseline"] = baseline_file
    elif spec not in (None, "zero"):
        options["baseline"] = float(spec)
    return options or None


def recorded_options(args) -> Optional[dict]:
    """What a JSON line records of the options: every option of the method, the default where no
    flag was given, the baseline as given (zero, unk, a number, the .npy path); None for methods
    without options."""
    from ..baselines import OPTIONS

    if args.method not in OPTIONS:
        return None
    recorded = {name: getattr(args, name) if getattr(args, name) is not None else default
                for name, default in OPTIONS[args.method].items()}
    recorded["baseline"] = args.baseline or "zero"
    return recorded


def unknown_word_vector(text_model, front) -> np.ndarray:
    """(embedding_dim,): the embedding vector of the unknown-word id of the command's vocabulary (a
    keras-lrp vocabulary: id 1; a Keras tokenizer: its oov_token's id; a TextVectorization layer:
    its [UNK] id), from ``--embeddings`` (or the shipped model's matrix) or the model's Embedding."""
    import keras

    from ..text import UNK_ID, KerasTokenizer, Vocabulary

    if front.vectorizes_inside:
        oov = sorted(front.vectorizer.oov_ids)
        unk = oov[0] if oov else None
    elif isinstance(text_model.vocabulary, KerasTokenizer):
        unk = text_model.vocabulary.oov_id
    elif isinstance(text_model.vocabulary, Vocabulary):
        unk = UNK_ID
    else:
        unk = None
    if unk is None:
        raise UsageError("--baseline unk: this vocabulary has no unknown-word token (a Keras tokenizer without "
                         "oov_token, a word_index without an <OOV> / <unk> entry); give --baseline zero or a number")
    if text_model.embeddings is not None:
        return np.asarray(text_model.embeddings[unk])
    layers = [layer for layer in front.model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if not layers or not isinstance(layers[0], keras.layers.Embedding):
        raise UsageError("--baseline unk needs the model's first layer to be an Embedding (or --embeddings); give "
                         "--baseline zero or a number")
    return keras.ops.convert_to_numpy(layers[0].embeddings[unk])
