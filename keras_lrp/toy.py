"""The toy arithmetic task of Arras et al. 2019 ("Evaluating Recurrent Neural Network Explanations").

A sequence of random numbers in which two positions are marked; the target is the sum (or the
difference) of the two marked numbers, a regression. Since the true dependence is known, the
relevance an explanation method gives each timestep can be checked: the two marked timesteps
should get relevance that follows their number (``n_a`` and ``n_b`` for "add"; ``n_a`` and
``-n_b`` for "subtract") and every other timestep none (see
:func:`keras_lrp.evaluate.marked_input_metrics`).

Each timestep is a 3-vector ``x_t = (n_t, a_t, b_t)``: ``n_t`` drawn uniformly from
``[low, high]``, ``a_t = 1`` at the first marked position and 0 elsewhere, ``b_t = 1`` at the
second marked position and 0 elsewhere. The two positions are drawn uniformly among the
``length`` timesteps (first < second). All sequences of one data set have the same length.

The model is ``LSTM(units)`` (or ``Bidirectional(LSTM(units))``) followed by ``Dense(1)``; it
trains to a validation mean squared error around 1e-4 (the targets have variance 2/3 for
``[-1, 1]``) in well under a minute on two CPU cores with the defaults.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

__all__ = ["TOY_OPERATIONS", "ToyData", "make_toy_data", "build_toy_model", "train_toy_model",
           "ToyTraining"]

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


def build_toy_model(units: int = 16, bidirectional: bool = False, seed: Optional[int] = 0):
    """``Input((None, 3)) -> LSTM(units) or Bidirectional(LSTM(units)) -> Dense(1)`` (a regressor)."""
    import keras

    if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units < 1:
        raise ValueError(f"units must be a positive integer, got {units!r}")
    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    lstm = keras.layers.LSTM(int(units), name="lstm")
    return keras.Sequential([
        keras.Input((None, 3), name="toy_sequence"),
        keras.layers.Bidirectional(lstm, name="bilstm") if bidirectional else lstm,
        keras.layers.Dense(1, name="output"),
    ], name="toy_bilstm" if bidirectional else "toy_lstm")


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
                    verbose: bool = False) -> ToyTraining:
    """Train :func:`build_toy_model` on ``train`` with Adam and mean squared error, halving the
    learning rate when the validation error stalls; stops after ``epochs`` or ``max_seconds``.

    ``verbose`` prints one line per epoch (validation MSE), so long runs show progress.
    """
    import keras

    if train.operation != val.operation:
        raise ValueError(f"train is {train.operation!r} but val is {val.operation!r}: use one operation")
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    model = build_toy_model(units, bidirectional, seed)
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
