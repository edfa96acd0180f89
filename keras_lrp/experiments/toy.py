"""The toy arithmetic task of Arras et al. 2019 ("Evaluating Recurrent Neural Network Explanations").

A sequence of random numbers in which two positions are marked; the target is the sum (or the
difference) of the two marked numbers, a regression. Since the true dependence is known, the
relevance an explanation method gives each timestep can be checked: the two marked timesteps
should get relevance that follows their number (``n_a`` and ``n_b`` for "add"; ``n_a`` and
``-n_b`` for "subtract") and every other timestep none (see
:func:`marked_input_metrics`).

Each timestep is a 3-vector ``x_t = (n_t, a_t, b_t)``: ``n_t`` drawn uniformly from
``[low, high]``, ``a_t = 1`` at the first marked position and 0 elsewhere, ``b_t = 1`` at the
second marked position and 0 elsewhere. The two positions are drawn uniformly among the
``length`` timesteps (first < second). All sequences of one data set have the same length.

The model is ``LSTM(units)`` (or ``Bidirectional(LSTM(units))``) followed by ``Dense(1)``; it
trains to a validation mean squared error around 1e-4 (the targets have variance 2/3 for
``[-1, 1]``) in well under a minute on two CPU cores with the defaults.

An explanation is scored by :func:`marked_input_metrics`:

* ``top2_accuracy``: the fraction of samples whose two timesteps of largest ``|relevance|`` are
  exactly the two marked ones;
* ``corr_first`` / ``corr_second``: Pearson correlation, over samples, between the relevance of the
  first (second) marked timestep and its contribution to the target (``n_a``; ``n_b`` for "add",
  ``-n_b`` for "subtract");
* ``marked_share``: the mean fraction of the total ``|relevance|`` that falls on the marked timesteps
  (over the samples whose relevance is finite).

The relevance of a timestep is its relevance summed over the three input features.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._common import (DEFAULT_METHODS, LABELS, TOY_METHODS, check_int, check_methods, inline_figure,
                      method_relevance, quiet_run)

__all__ = ["TOY_OPERATIONS", "TOY_METHODS", "TOY_CELLS", "ToyData", "make_toy_data", "build_toy_model", "train_toy_model",
           "ToyTraining", "marked_input_metrics", "ToyResult", "toy_evaluation", "run_toy_experiment"]

#: "add": y = n_a + n_b; "subtract": y = n_a - n_b (a = the first marked position).
TOY_OPERATIONS = ("add", "subtract")


@dataclass
class ToyData:
    """A toy data set.

    Attributes:
        x: (n, time, 3) float32 inputs ``(number, first marker, second marker)``.
        y: (n,) float32 targets.
        positions: (n, 2) int, the first and second marked timestep (first < second).
        values: (n, 2) float32, the marked numbers ``n_a, n_b``.
        operation: "add" or "subtract".
    """

    x: np.ndarray
    y: np.ndarray
    positions: np.ndarray
    values: np.ndarray
    operation: str

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def contributions(self) -> np.ndarray:
        """(n, 2): what each marked number adds to the target, ``(n_a, n_b)`` for "add" and
        ``(n_a, -n_b)`` for "subtract"; the ideal relevance of the two marked timesteps."""
        sign = 1.0 if self.operation == "add" else -1.0
        return np.stack([self.values[:, 0], sign * self.values[:, 1]], axis=1)


def make_toy_data(n: int, length: int = 10, operation: str = "add", low: float = -1.0,
                  high: float = 1.0, seed: Optional[int] = 0) -> ToyData:
    """Draw ``n`` toy sequences of ``length`` timesteps (see the module docstring).

    Args:
        n: number of sequences, >= 1.
        length: timesteps per sequence, >= 2.
        operation: "add" or "subtract".
        low, high: the numbers are uniform in ``[low, high]``.
        seed: seed of the numpy generator (None: fresh randomness).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 2:
        raise ValueError(f"length must be an integer >= 2 (two positions are marked), got {length!r}")
    if operation not in TOY_OPERATIONS:
        raise ValueError(f"operation must be one of {TOY_OPERATIONS}, got {operation!r}")
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(f"need finite low < high, got low={low!r}, high={high!r}")
    rng = np.random.default_rng(seed)
    x = np.zeros((n, length, 3), np.float32)
    x[:, :, 0] = rng.uniform(low, high, size=(n, length))
    # Two distinct positions per row: the first two entries of a random permutation of 0..length-1.
    positions = np.sort(np.argsort(rng.random((n, length)), axis=1)[:, :2], axis=1)
    rows = np.arange(n)
    x[rows, positions[:, 0], 1] = 1.0
    x[rows, positions[:, 1], 2] = 1.0
    values = np.stack([x[rows, positions[:, 0], 0], x[rows, positions[:, 1], 0]], axis=1)
    y = values[:, 0] + values[:, 1] if operation == "add" else values[:, 0] - values[:, 1]
    return ToyData(x=x, y=y.astype(np.float32), positions=positions.astype(np.int64),
                   values=values.astype(np.float32), operation=operation)


#: the recurrent families of the toy model (``cell=``)
TOY_CELLS = ("lstm", "gru", "simple_rnn")


def build_toy_model(units: int = 16, bidirectional: bool = False, seed: Optional[int] = 0, cell: str = "lstm"):
    """``Input((None, 3)) -> LSTM(units) or Bidirectional(LSTM(units)) -> Dense(1)`` (a regressor);
    ``cell="gru"`` / ``"simple_rnn"``: a GRU / SimpleRNN instead of the LSTM."""
    import keras

    if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units < 1:
        raise ValueError(f"units must be a positive integer, got {units!r}")
    if cell not in TOY_CELLS:
        raise ValueError(f"cell must be one of {TOY_CELLS}, got {cell!r}")
    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    layer = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "simple_rnn": keras.layers.SimpleRNN}[cell]
    rnn = layer(int(units), name=cell)
    return keras.Sequential([
        keras.Input((None, 3), name="toy_sequence"),
        keras.layers.Bidirectional(rnn, name=f"bi{cell}") if bidirectional else rnn,
        keras.layers.Dense(1, name="output"),
    ], name=f"toy_bi{cell}" if bidirectional else f"toy_{cell}")


@dataclass
class ToyTraining:
    """What :func:`train_toy_model` returns: the model and its training record."""

    model: object
    val_mse: float
    target_variance: float
    epochs: int
    seconds: float
    history: Dict[str, List[float]]


def train_toy_model(train: ToyData, val: ToyData, units: int = 16, bidirectional: bool = False,
                    epochs: int = 20, batch_size: int = 64, learning_rate: float = 3e-3,
                    seed: Optional[int] = 0, max_seconds: Optional[float] = None,
                    verbose: bool = False, cell: str = "lstm") -> ToyTraining:
    """Train :func:`build_toy_model` on ``train`` with Adam and mean squared error, halving the
    learning rate when the validation error stalls; stops after ``epochs`` or ``max_seconds``.

    ``verbose`` prints one line per epoch (validation MSE), so long runs show progress.
    """
    import keras

    if train.operation != val.operation:
        raise ValueError(f"train is {train.operation!r} but val is {val.operation!r}: use one operation")
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    model = build_toy_model(units, bidirectional, seed, cell)
    model.compile(keras.optimizers.Adam(learning_rate), "mse")
    t0 = time.perf_counter()

    class _Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            if verbose:
                print(f"toy training: epoch {epoch + 1}/{epochs}  loss {logs.get('loss', float('nan')):.2e}"
                      f"  val mse {logs.get('val_loss', float('nan')):.2e}"
                      f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                self.model.stop_training = True

    callbacks = [keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, min_lr=1e-5),
                 _Report()]
    hist = model.fit(train.x, train.y, batch_size=batch_size, epochs=int(epochs),
                     validation_data=(val.x, val.y), verbose=0, callbacks=callbacks, shuffle=True)
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    pred = np.asarray(model.predict(val.x, batch_size=1024, verbose=0))[:, 0]
    return ToyTraining(model=model, val_mse=float(np.mean((pred - val.y) ** 2)),
                       target_variance=float(np.var(val.y)), epochs=len(history.get("loss", [])),
                       seconds=time.perf_counter() - t0, history=history)


# ---- scoring explanations on the toy task --------------------------------------------------------

def marked_input_metrics(relevance: np.ndarray, positions: np.ndarray, contributions: np.ndarray
                         ) -> Dict[str, float]:
    """How well a relevance recovers the two marked inputs of the toy task (see the module docstring).

    Args:
        relevance: (n, time) relevance per timestep (or (n, time, features), summed here).
        positions: (n, 2) the marked timesteps.
        contributions: (n, 2) what each marked input adds to the target (``ToyData.contributions``).

    Returns:
        dict with ``top2_accuracy``, ``corr_first``, ``corr_second``, ``marked_share`` and
        ``nonfinite`` (the fraction of samples with NaN or inf relevance; the correlations are NaN
        when there are any).
    """
    r = np.asarray(relevance, dtype=np.float64)
    if r.ndim == 3:
        r = r.sum(axis=-1)
    pos = np.asarray(positions)
    c = np.asarray(contributions, dtype=np.float64)
    if r.ndim != 2 or pos.shape != (r.shape[0], 2) or c.shape != (r.shape[0], 2):
        raise ValueError(f"need relevance (n, time), positions (n, 2), contributions (n, 2); got "
                         f"{r.shape}, {pos.shape}, {c.shape}")
    if r.shape[1] < 2 or pos.min() < 0 or pos.max() >= r.shape[1]:
        raise ValueError(f"positions must be timesteps 0..{r.shape[1] - 1}")
    rows = np.arange(r.shape[0])
    with np.errstate(invalid="ignore", over="ignore"):
        a = np.nan_to_num(np.abs(r), nan=0.0)
    # The two largest |relevance| positions (a stable sort: ties go to the earlier timestep).
    top2 = np.sort(np.argsort(-a, axis=1, kind="stable")[:, :2], axis=1)
    hit = np.all(top2 == np.sort(pos, axis=1), axis=1)
    finite = np.isfinite(r).all(axis=1)
    marked = a[rows, pos[:, 0]] + a[rows, pos[:, 1]]
    with np.errstate(invalid="ignore", over="ignore"):
        total = a.sum(axis=1)
    # Share on the rows with finite relevance (0 where all relevance is 0).
    share = np.divide(marked, total, out=np.zeros_like(marked), where=finite & (total > 0))[finite]

    def corr(u, v):
        if r.shape[0] < 2 or np.std(u) == 0 or np.std(v) == 0 or not np.all(np.isfinite(u)):
            return float("nan")
        return float(np.corrcoef(u, v)[0, 1])

    return {"top2_accuracy": float(hit.mean()), "corr_first": corr(r[rows, pos[:, 0]], c[:, 0]),
            "corr_second": corr(r[rows, pos[:, 1]], c[:, 1]),
            "marked_share": float(share.mean()) if share.size else float("nan"),
            "nonfinite": float((~finite).mean())}


@dataclass
class ToyResult:
    """What :func:`toy_evaluation` returns.

    Attributes:
        methods: the compared methods.
        metrics: method -> :func:`marked_input_metrics` dict.
        relevance: method -> (n, time) relevance per timestep (kept for plots).
        mse: the model's mean squared error on the evaluated data.
        target_variance: the variance of the targets (an MSE far below it = the task is solved).
        operation: "add" or "subtract".
        settings: eps, bias_factor, seed, ...
    """

    methods: Tuple[str, ...]
    metrics: Dict[str, Dict[str, float]]
    relevance: Dict[str, np.ndarray]
    positions: np.ndarray
    contributions: np.ndarray
    mse: float
    target_variance: float
    operation: str
    settings: Dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-serialisable summary (without the relevance arrays)."""
        return {"methods": list(self.methods), "metrics": self.metrics, "mse": self.mse,
                "target_variance": self.target_variance, "operation": self.operation,
                "n": int(self.positions.shape[0]), "settings": dict(self.settings)}

    def table(self) -> str:
        """Markdown table of the metrics per method."""
        second = "n_b" if self.operation == "add" else "−n_b"
        lines = [f"**Toy task '{self.operation}'** (n = {self.positions.shape[0]} test sequences, "
                 f"model MSE {self.mse:.2e}, target variance {self.target_variance:.3f})", "",
                 f"| method | top-2 accuracy (%) | ρ(R_a, n_a) | ρ(R_b, {second}) | relevance share on marked (%) |",
                 "| --- | ---: | ---: | ---: | ---: |"]
        for m in self.methods:
            d = self.metrics[m]
            lines.append(f"| {LABELS.get(m, m)} | {100 * d['top2_accuracy']:.1f} | {d['corr_first']:.3f} | "
                         f"{d['corr_second']:.3f} | {100 * d['marked_share']:.1f} |")
        return "\n".join(lines) + "\n"

    def plot(self, max_points: int = 300):
        """Relevance of the two marked timesteps against their contribution, one panel per method."""
        n = len(self.methods)
        cols = min(n, 3)
        rows = (n + cols - 1) // cols
        fig = inline_figure(figsize=(3.3 * cols, 3.0 * rows), layout="constrained")
        axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
        idx = np.arange(min(max_points, self.positions.shape[0]))
        r_rows = np.arange(self.positions.shape[0])[idx]
        for ax, m in zip(axes, self.methods):
            r = self.relevance[m]
            for j, (color, name) in enumerate((("#d62728", "first"), ("#1f77b4", "second"))):
                ax.scatter(self.contributions[idx, j], r[r_rows, self.positions[idx, j]], s=6, alpha=0.5,
                           linewidths=0, color=color, label=f"{name} marked")
            d = self.metrics[m]
            ax.set_title(f"{LABELS.get(m, m)}: top-2 {100 * d['top2_accuracy']:.0f}%, "
                         f"ρ {d['corr_first']:.2f}/{d['corr_second']:.2f}", fontsize=9)
            ax.set_xlabel("contribution to the target", fontsize=8)
            ax.set_ylabel("relevance", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            # Heavy outliers (the prop rule can explode) would flatten everything else: clip the view.
            vals = np.concatenate([r[r_rows, self.positions[idx, 0]], r[r_rows, self.positions[idx, 1]]])
            vals = vals[np.isfinite(vals)]
            if vals.size:
                lo, hi = np.percentile(vals, [1, 99])
                pad = 0.1 * max(hi - lo, 1e-6)
                ax.set_ylim(lo - pad, hi + pad)
        for ax in axes[n:]:
            ax.set_axis_off()
        axes[0].legend(fontsize=7, loc="upper left")
        fig.suptitle(f"toy task '{self.operation}': relevance of the marked inputs (1st-99th percentile view)",
                     fontsize=10)
        return fig


def toy_evaluation(model, data, methods: Union[str, Sequence[str]] = DEFAULT_METHODS, *, eps: float = 1e-3,
                   bias_factor: float = 0.0, dtype: str = "float32", batch_size: int = 256,
                   seed: int = 0) -> ToyResult:
    """Explain a toy-task model on ``data`` (:class:`ToyData`) with every method and
    score how well each recovers the marked inputs (:func:`marked_input_metrics`)."""
    methods = check_methods(methods, TOY_METHODS)
    seed = check_int("seed", seed, 0)
    pred = np.asarray(model.predict(data.x, batch_size=1024, verbose=0)).reshape(len(data), -1)
    if pred.shape[1] != 1:
        raise ValueError(f"the toy model must have one output (a regression), this one has {pred.shape[1]}")
    metrics, relevance = {}, {}
    with quiet_run():
        for m in methods:
            r = method_relevance(model, data.x, 0, m, eps=eps, bias_factor=bias_factor, dtype=dtype,
                                 batch_size=batch_size, rng=np.random.default_rng(seed))
            relevance[m] = r
            metrics[m] = marked_input_metrics(r, data.positions, data.contributions)
    return ToyResult(methods=methods, metrics=metrics, relevance=relevance, positions=data.positions,
                     contributions=data.contributions, mse=float(np.mean((pred[:, 0] - data.y) ** 2)),
                     target_variance=float(np.var(data.y)), operation=data.operation,
                     settings=dict(eps=eps, bias_factor=bias_factor, dtype=dtype, seed=seed))


def run_toy_experiment(operation: str = "add", length: int = 10, n_train: int = 20000, n_test: int = 2000,
                       units: int = 16, bidirectional: bool = False, epochs: int = 20,
                       methods: Union[str, Sequence[str]] = DEFAULT_METHODS, seed: int = 0,
                       max_seconds: Optional[float] = None, verbose: bool = False, cell: str = "lstm"):
    """Generate data, train the toy model (``cell``: "lstm", "gru" or "simple_rnn") and evaluate every
    method on fresh test data.

    Returns:
        ``(training, result)``: :class:`ToyTraining` and :class:`ToyResult`.
    """
    methods = check_methods(methods, TOY_METHODS)
    seed = check_int("seed", seed, 0)
    train = make_toy_data(n_train, length, operation, seed=seed)
    val = make_toy_data(max(n_test // 2, 1), length, operation, seed=seed + 1)
    test = make_toy_data(n_test, length, operation, seed=seed + 2)
    training = train_toy_model(train, val, units=units, bidirectional=bidirectional, epochs=epochs, seed=seed,
                               max_seconds=max_seconds, verbose=verbose, cell=cell)
    result = toy_evaluation(training.model, test, methods, seed=seed)
    result.settings.update(length=length, n_train=n_train, units=units, bidirectional=bidirectional, cell=cell,
                           epochs_trained=training.epochs, training_seconds=round(training.seconds, 1))
    return training, result
