"""Train the bi-LSTM sentiment classifier on the Stanford Sentiment Treebank and export it for LRP.

Usage::

    python -m keras_lrp.sst.train DATA_DIR OUT_DIR [--classes 5] [--epochs 20] [--max-sentences N] ...

``DATA_DIR`` holds ``train.txt``, ``dev.txt``, ``test.txt`` (SST PTB trees). The model follows
Li et al. 2016 / Arras et al. 2017: word embeddings -> ``Bidirectional(LSTM(units))`` ->
``Dense(classes, use_bias=False)`` (``--architecture``: or a Bi-GRU, a CNN, a Bi-LSTM with
self-attention, or a small transformer encoder, see :data:`ARCHITECTURES`). The embeddings are
trained from scratch (no pretrained vectors are available offline). Training sees every phrase of
the training trees (phrase-level labels, unless ``--no-phrases``), batched by length; early stopping
keeps the epoch with the best dev
SENTENCE accuracy.

Written under ``OUT_DIR``:

* ``models/{name}_bilstm.keras`` -- the model that is explained, on embedding VECTORS::

      Sequential([Input((None, emb_dim)), Bidirectional(LSTM(units)), Dense(classes, use_bias=False)])

  input (batch, time, emb_dim), output (batch, classes) class scores (logits, no softmax);
* ``models/{name}_bilstm.json`` -- metadata: class names, tokenizer settings, file names, accuracies;
* ``embeddings/{name}_vocab.json`` -- :class:`keras_lrp.text.Vocabulary` (0 = padding, 1 = unknown);
* ``embeddings/{name}_embeddings.npy`` -- float32 (vocab size, emb_dim), row 0 zeros, row 1 unknown.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..text import PAD_ID, UNK_ID, Tokenizer, Vocabulary
from .reader import SST2_CLASS_NAMES, SST5_CLASS_NAMES, iter_phrases, read_sst

__all__ = ["TrainConfig", "TrainResult", "train", "build_token_model", "build_vector_model",
           "export_vector_model", "main", "ARCHITECTURES"]

#: The model families :func:`train` builds between the embedding and the ``Dense(classes)`` scores:
#: ``bilstm`` (the paper's), ``bigru`` (Bidirectional(GRU(units))), ``cnn`` (Conv1D(units, 3, relu) ->
#: global max pooling), ``bilstm_attention`` (Bidirectional(LSTM(units, return_sequences)) -> dot-product
#: self-attention -> average pooling) and ``transformer`` (one encoder block: 2-head self-attention
#: and a relu feed-forward of ``units``, residuals and LayerNormalization, average pooling; no
#: positional encoding).
ARCHITECTURES = ("bilstm", "bigru", "cnn", "bilstm_attention", "transformer")


@dataclass
class TrainConfig:
    """Settings of one training run (all recorded in the metadata JSON)."""

    data_dir: str
    out_dir: str
    classes: int = 5
    name: Optional[str] = None          # file prefix; default "sst5" / "sst2"
    emb_dim: int = 60
    units: int = 60
    min_freq: int = 1
    phrases: bool = True
    epochs: int = 20
    patience: int = 4
    batch_size: int = 64
    learning_rate: float = 2e-3
    emb_dropout: float = 0.5
    out_dropout: float = 0.5
    unk_rate: float = 0.25              # chance a train-singleton token is replaced by <unk>
    max_sentences: Optional[int] = None
    max_minutes: Optional[float] = None
    seed: int = 1234
    verbose: bool = True
    architecture: str = "bilstm"

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.classes not in (2, 5):
            raise ValueError(f"classes must be 5 (SST-5) or 2 (SST-2), got {self.classes!r}")
        for key in ("emb_dim", "units", "min_freq", "epochs", "batch_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be an int >= 1, got {value!r}")
        if not isinstance(self.patience, int) or self.patience < 0:
            raise ValueError(f"patience must be an int >= 0, got {self.patience!r}")
        for key in ("emb_dropout", "out_dropout", "unk_rate"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{key} must be in [0, 1), got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if self.max_sentences is not None and (not isinstance(self.max_sentences, int)
                                               or self.max_sentences < 1):
            raise ValueError(f"max_sentences must be None or an int >= 1, got {self.max_sentences!r}")
        if self.name is None:
            self.name = f"sst{self.classes}"
        if not self.name or any(c in self.name for c in "/\\") or self.name.startswith("."):
            raise ValueError(f"name must be a plain file prefix, got {self.name!r}")

    @property
    def class_names(self) -> Tuple[str, ...]:
        return SST5_CLASS_NAMES if self.classes == 5 else SST2_CLASS_NAMES


@dataclass
class TrainResult:
    """What :func:`train` produced (paths are absolute)."""

    model_path: str
    metadata_path: str
    vocab_path: str
    embeddings_path: str
    metadata: dict
    token_model: object      # keras.Model on int ids (batch, time) -> (batch, classes)
    vector_model: object     # keras.Model on vectors (batch, time, emb_dim) -> (batch, classes)
    vocabulary: Vocabulary
    embeddings: np.ndarray


def _log(cfg: TrainConfig, msg: str) -> None:
    if cfg.verbose:
        print(msg, flush=True)


# ---- models --------------------------------------------------------------------------------
def _encoder(x, units: int, architecture: str, emb_dim: int):
    """The layers between the embedding vectors ``x`` and the output dropout (named, so that
    :func:`export_vector_model` copies them by name)."""
    import keras

    L = keras.layers
    if architecture == "bilstm":
        return L.Bidirectional(L.LSTM(units), name="bilstm")(x)
    if architecture == "bigru":
        return L.Bidirectional(L.GRU(units), name="bigru")(x)
    if architecture == "cnn":
        return L.GlobalMaxPooling1D(name="pool")(L.Conv1D(units, 3, padding="same", activation="relu", name="conv")(x))
    if architecture == "bilstm_attention":
        h = L.Bidirectional(L.LSTM(units, return_sequences=True), name="bilstm")(x)
        return L.GlobalAveragePooling1D(name="pool")(L.Attention(name="attention")([h, h]))
    a = L.MultiHeadAttention(2, max(units // 2, 1), name="attention")(x, x)
    h = L.LayerNormalization(name="norm1")(L.Add(name="residual1")([x, a]))
    f = L.Dense(emb_dim, name="ffn2")(L.Dense(units, activation="relu", name="ffn1")(h))
    h = L.LayerNormalization(name="norm2")(L.Add(name="residual2")([h, f]))
    return L.GlobalAveragePooling1D(name="pool")(h)


def build_token_model(vocab_size: int, classes: int, emb_dim: int = 60, units: int = 60,
                      emb_dropout: float = 0.0, out_dropout: float = 0.0, architecture: str = "bilstm"):
    """Training model: int ids (batch, time), 0 = padding -> class scores (batch, classes)."""
    import keras

    ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    # Conv1D drops masks (with a warning): the CNN sees the padding's vectors, as its max pooling would
    x = keras.layers.Embedding(vocab_size, emb_dim, mask_zero=architecture != "cnn", name="embedding")(ids)
    x = keras.layers.Dropout(emb_dropout, name="embedding_dropout")(x)
    x = _encoder(x, units, architecture, emb_dim)
    x = keras.layers.Dropout(out_dropout, name="output_dropout")(x)
    scores = keras.layers.Dense(classes, use_bias=False, name="scores")(x)
    return keras.Model(ids, scores, name=f"sst_{architecture}_tokens")


def build_vector_model(classes: int, emb_dim: int = 60, units: int = 60, architecture: str = "bilstm"):
    """The model that is explained: vectors (batch, time, emb_dim) -> class scores (batch, classes).

    No masking: feed unpadded sentences (one at a time, or batches of equal length).
    """
    import keras

    if architecture == "bilstm":
        return keras.Sequential([
            keras.Input((None, emb_dim), name="embedded_tokens"),
            keras.layers.Bidirectional(keras.layers.LSTM(units), name="bilstm"),
            keras.layers.Dense(classes, use_bias=False, name="scores"),
        ], name="sst_bilstm")
    x = keras.Input((None, emb_dim), name="embedded_tokens")
    scores = keras.layers.Dense(classes, use_bias=False, name="scores")(_encoder(x, units, architecture, emb_dim))
    return keras.Model(x, scores, name=f"sst_{architecture}")


def export_vector_model(token_model, architecture: str = "bilstm", units: Optional[int] = None
                        ) -> Tuple[object, np.ndarray]:
    """Split a trained token model into (vector model, embedding matrix float32).

    The embedding matrix gets row ``PAD_ID`` set to zeros (padding is masked in the token model,
    so that row is never used for a real token). ``units``: of the encoder (default: read from the
    Bi-LSTM; required for the other architectures).
    """
    emb = token_model.get_layer("embedding")
    dense = token_model.get_layer("scores")
    matrix = np.array(emb.get_weights()[0], dtype=np.float32)
    matrix[PAD_ID] = 0.0
    if units is None:
        units = token_model.get_layer("bilstm").forward_layer.units
    vector_model = build_vector_model(dense.units, matrix.shape[1], units, architecture)
    for layer in vector_model.layers:
        if layer.weights:
            layer.set_weights(token_model.get_layer(layer.name).get_weights())
    return vector_model, matrix


# ---- batching ------------------------------------------------------------------------------
def _encode_all(vocab: Vocabulary, seqs: Sequence[Sequence[str]]) -> List[np.ndarray]:
    return [vocab.encode(list(s))[0] for s in seqs]


def _length_batches(lengths: np.ndarray, batch_size: int, rng: Optional[np.random.Generator]
                    ) -> List[np.ndarray]:
    """Index batches of (nearly) equal-length sequences; shuffled within lengths and in order."""
    if rng is None:
        order = np.argsort(lengths, kind="stable")
    else:
        order = np.lexsort((rng.random(len(lengths)), lengths))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        rng.shuffle(batches)
    return batches


def _pad(seqs: Sequence[np.ndarray]) -> np.ndarray:
    out = np.full((len(seqs), max(len(s) for s in seqs)), PAD_ID, dtype=np.int32)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out


def _predict_classes(predict_fn, ids: List[np.ndarray], batch_size: int = 256) -> np.ndarray:
    lengths = np.array([len(s) for s in ids])
    pred = np.empty(len(ids), dtype=np.int64)
    for idx in _length_batches(lengths, batch_size, None):
        scores = np.asarray(predict_fn(_pad([ids[i] for i in idx])))
        pred[idx] = scores.argmax(-1)
    return pred


def _accuracy(predict_fn, ids: List[np.ndarray], labels: np.ndarray) -> float:
    if not len(ids):
        return float("nan")
    return float((_predict_classes(predict_fn, ids) == labels).mean())


# ---- training ------------------------------------------------------------------------------
def train(cfg: TrainConfig, command: Optional[str] = None) -> TrainResult:
    """Train, early-stop on dev sentence accuracy, export and save; see the module docstring."""
    paths = {split: os.path.join(cfg.data_dir, f"{split}.txt") for split in ("train", "dev", "test")}
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"SST files missing: {', '.join(missing)}. DATA_DIR must hold train.txt, "
                                "dev.txt and test.txt (Stanford Sentiment Treebank PTB trees).")
    os.makedirs(os.path.join(cfg.out_dir, "models"), exist_ok=True)
    os.makedirs(os.path.join(cfg.out_dir, "embeddings"), exist_ok=True)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    t_start = time.time()
    keras.utils.set_random_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    binary = cfg.classes == 2
    tokenizer = Tokenizer(lowercase=True)

    _log(cfg, f"reading SST from {cfg.data_dir} ({'SST-2' if binary else 'SST-5'})")
    train_sents = read_sst(paths["train"], binary=binary, phrases=cfg.phrases, tokenizer=tokenizer,
                           max_sentences=cfg.max_sentences)
    dev_sents = read_sst(paths["dev"], binary=binary, tokenizer=tokenizer,
                         max_sentences=cfg.max_sentences)
    test_sents = read_sst(paths["test"], binary=binary, tokenizer=tokenizer,
                          max_sentences=cfg.max_sentences)
    if not train_sents or not dev_sents:
        raise ValueError("no training or dev sentences left (too small --max-sentences?)")

    vocab = Vocabulary.from_corpus([s.tokens for s in train_sents], min_freq=cfg.min_freq)
    if cfg.phrases:
        examples = list(iter_phrases(train_sents, unique=True))
    else:
        examples = [(tuple(s.tokens), s.label) for s in train_sents]
    x_train = _encode_all(vocab, [toks for toks, _ in examples])
    y_train = np.array([lab for _, lab in examples], dtype=np.int32)
    lengths = np.array([len(s) for s in x_train])
    x_train_sent = _encode_all(vocab, [s.tokens for s in train_sents])
    y_train_sent = np.array([s.label for s in train_sents])
    x_dev = _encode_all(vocab, [s.tokens for s in dev_sents])
    y_dev = np.array([s.label for s in dev_sents])
    x_test = _encode_all(vocab, [s.tokens for s in test_sents])
    y_test = np.array([s.label for s in test_sents])
    singleton = np.zeros(len(vocab), dtype=bool)
    for tok, n in vocab.counts.items():
        if n == 1:
            singleton[vocab.token_to_id(tok)] = True
    _log(cfg, f"{len(train_sents)} train / {len(dev_sents)} dev / {len(test_sents)} test sentences; "
              f"{len(examples)} training {'phrases' if cfg.phrases else 'sentences'}; "
              f"vocabulary {len(vocab)} ids (min_freq={cfg.min_freq})")

    model = build_token_model(len(vocab), cfg.classes, cfg.emb_dim, cfg.units,
                              cfg.emb_dropout, cfg.out_dropout, cfg.architecture)
    optimizer = keras.optimizers.Adam(learning_rate=cfg.learning_rate, clipnorm=5.0)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=optimizer, loss=loss_fn)
    model.optimizer.build(model.trainable_variables)

    spec = tf.TensorSpec((None, None), tf.int32)

    @tf.function(input_signature=[spec, tf.TensorSpec((None,), tf.int32)], reduce_retracing=True)
    def train_step(x, y):
        with tf.GradientTape() as tape:
            scores = model(x, training=True)
            loss = loss_fn(y, scores)
        grads = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply(grads, model.trainable_variables)
        return loss

    @tf.function(input_signature=[spec], reduce_retracing=True)
    def predict_fn(x):
        return model(x, training=False)

    best = {"dev": -1.0, "epoch": 0, "weights": None}
    history = []
    bad_epochs = 0
    n_batches = math.ceil(len(x_train) / cfg.batch_size)
    stopped = "max epochs"
    for epoch in range(1, cfg.epochs + 1):
        t_epoch = time.time()
        total_loss, seen = 0.0, 0
        batches = _length_batches(lengths, cfg.batch_size, rng)
        report_every = max(1, n_batches // 10)
        for b, idx in enumerate(batches, start=1):
            x = _pad([x_train[i] for i in idx])
            if cfg.unk_rate > 0:
                drop = singleton[x] & (rng.random(x.shape) < cfg.unk_rate)
                x = np.where(drop, UNK_ID, x).astype(np.int32)
            loss = float(train_step(x, y_train[idx]))
            total_loss += loss * len(idx)
            seen += len(idx)
            if cfg.verbose and (b % report_every == 0 or b == n_batches):
                elapsed = time.time() - t_epoch
                print(f"\r  epoch {epoch}: batch {b}/{n_batches} loss {total_loss / seen:.4f} "
                      f"({elapsed:.0f}s, eta {elapsed / b * (n_batches - b):.0f}s)",
                      end="", flush=True)
        dev_acc = _accuracy(predict_fn, x_dev, y_dev)
        history.append({"epoch": epoch, "loss": total_loss / seen, "dev_accuracy": dev_acc,
                        "seconds": round(time.time() - t_epoch, 1)})
        improved = dev_acc > best["dev"]
        _log(cfg, f"\repoch {epoch}/{cfg.epochs}: loss {total_loss / seen:.4f}, dev sentence accuracy "
                  f"{dev_acc:.4f}{' (best)' if improved else ''}, {time.time() - t_epoch:.0f}s"
                  + " " * 20)
        if improved:
            best.update(dev=dev_acc, epoch=epoch, weights=[w.copy() for w in model.get_weights()])
            bad_epochs = 0
        else:
            bad_epochs += 1
            if bad_epochs > cfg.patience:
                stopped = f"early stop (no dev gain for {bad_epochs} epochs)"
                break
        if cfg.max_minutes is not None and (time.time() - t_start) / 60 > cfg.max_minutes:
            stopped = f"time budget of {cfg.max_minutes} min reached"
            break
    model.set_weights(best["weights"])
    _log(cfg, f"{stopped}; keeping epoch {best['epoch']} (dev {best['dev']:.4f})")

    accuracy = {
        "train": _accuracy(predict_fn, x_train_sent, y_train_sent),
        "dev": _accuracy(predict_fn, x_dev, y_dev),
        "test": _accuracy(predict_fn, x_test, y_test),
    }
    _log(cfg, "sentence accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in accuracy.items()))

    vector_model, matrix = export_vector_model(model, cfg.architecture, cfg.units)
    stem = f"{cfg.name}_{cfg.architecture}"
    model_path = os.path.abspath(os.path.join(cfg.out_dir, "models", stem + ".keras"))
    metadata_path = os.path.abspath(os.path.join(cfg.out_dir, "models", stem + ".json"))
    vocab_path = os.path.abspath(os.path.join(cfg.out_dir, "embeddings", f"{cfg.name}_vocab.json"))
    emb_path = os.path.abspath(os.path.join(cfg.out_dir, "embeddings", f"{cfg.name}_embeddings.npy"))
    vector_model.save(model_path)
    vocab.save(vocab_path)
    np.save(emb_path, matrix)

    settings = asdict(cfg)
    for key in ("data_dir", "out_dir", "verbose"):
        settings.pop(key)
    metadata = {
        "format": "keras_lrp.text_classifier",
        "version": 1,
        "task": "SST-2" if binary else "SST-5",
        "class_names": list(cfg.class_names),
        "model": os.path.basename(model_path),
        "vocabulary": os.path.relpath(vocab_path, os.path.dirname(metadata_path)),
        "embeddings": os.path.relpath(emb_path, os.path.dirname(metadata_path)),
        "tokenizer": tokenizer.get_config(),
        "input": f"float32 embedding vectors (batch, time, {cfg.emb_dim}) of the tokens, looked up in "
                 "the embedding matrix by vocabulary id; not masked, so do not pad",
        "output": f"class scores (batch, {cfg.classes}), logits (no softmax)",
        "emb_dim": cfg.emb_dim,
        "units": cfg.units,
        "vocab_size": len(vocab),
        "pretrained_vectors": None,
        "sentence_accuracy": {k: round(v, 4) for k, v in accuracy.items()},
        "sentences": {"train": len(train_sents), "dev": len(dev_sents), "test": len(test_sents)},
        "training_examples": len(examples),
        "best_epoch": best["epoch"],
        "stopped": stopped,
        "history": history,
        "settings": settings,
        "train_seconds": round(time.time() - t_start, 1),
        "command": command,
        "versions": {"keras": keras.__version__, "tensorflow": tf.__version__},
    }
    with open(metadata_path, "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=1)
        f.write("\n")
    _log(cfg, f"wrote {model_path}, {metadata_path}, {vocab_path}, {emb_path} "
              f"({metadata['train_seconds']:.0f}s in all)")
    return TrainResult(model_path, metadata_path, vocab_path, emb_path, metadata, model,
                       vector_model, vocab, matrix)


def _parser() -> argparse.ArgumentParser:
    d = TrainConfig("", "")
    p = argparse.ArgumentParser(
        prog="python -m keras_lrp.sst.train",
        description="Train the SST bi-LSTM (embeddings -> BiLSTM -> Dense without bias) and export "
                    "the vector model that keras_lrp explains.")
    p.add_argument("data_dir", help="folder with train.txt, dev.txt, test.txt (SST PTB trees)")
    p.add_argument("out_dir", help="writes OUT_DIR/models/ and OUT_DIR/embeddings/")
    p.add_argument("--classes", type=int, choices=(5, 2), default=d.classes,
                   help="5 = SST-5 fine-grained, 2 = SST-2 binary (default %(default)s)")
    p.add_argument("--name", default=None, help="file prefix (default sst5 / sst2)")
    p.add_argument("--emb-dim", type=int, default=d.emb_dim)
    p.add_argument("--units", type=int, default=d.units, help="LSTM units per direction")
    p.add_argument("--min-freq", type=int, default=d.min_freq,
                   help="keep train tokens seen at least this often (default %(default)s)")
    p.add_argument("--no-phrases", dest="phrases", action="store_false",
                   help="train on whole sentences only (default: every phrase of the train trees)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--patience", type=int, default=d.patience,
                   help="stop after this many epochs without dev gain")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", dest="learning_rate", type=float, default=d.learning_rate)
    p.add_argument("--emb-dropout", type=float, default=d.emb_dropout)
    p.add_argument("--out-dropout", type=float, default=d.out_dropout)
    p.add_argument("--unk-rate", type=float, default=d.unk_rate,
                   help="chance a train-singleton token is replaced by <unk> (trains <unk>)")
    p.add_argument("--max-sentences", type=int, default=None,
                   help="use only the first N trees of each split (quick runs)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop after the epoch that passes this wall-clock budget")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--architecture", choices=ARCHITECTURES, default=d.architecture,
                   help="model family between embedding and scores (default %(default)s)")
    p.add_argument("--quiet", dest="verbose", action="store_false")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        cfg = TrainConfig(**vars(args))
    except ValueError as e:
        _parser().error(str(e))
    command = "python -m keras_lrp.sst.train " + " ".join(argv)
    try:
        train(cfg, command=command)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
