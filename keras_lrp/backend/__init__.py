"""What Keras 3 has no backend-neutral API for, one small module per backend.

Every other module of keras_lrp computes with ``keras.ops`` and imports no backend; this package
holds the rest, for the backend Keras runs on (``KERAS_BACKEND``: "tensorflow", "jax" or "torch"):

* :func:`compile_function`: the explain function compiled once and called many times
  (``tf.function``, or with ``jit_compile`` compiled by XLA; ``jax.jit`` with the weights passed as
  arguments, so that they are read live; torch runs eagerly); :func:`static_batch`: the same function
  for one batch size (TensorFlow traces it again with that batch axis);
* :func:`vjp` and :func:`value_and_gradient`: vector-Jacobian products of linear maps (the rules
  through convolutions, pooling, selections) and the gradient baselines (``GradientTape``,
  ``jax.vjp`` / ``jax.grad``, ``torch.autograd``);
* :data:`einsum`: ``tf.einsum`` on TensorFlow, ``keras.ops.einsum`` elsewhere (rounding independent
  of the batch size);
* :func:`time_loop`: the loop over time steps of the recurrences (TensorFlow: a tuned
  ``tf.while_loop``; elsewhere ``keras.ops.scan``);
* :func:`available_devices` / :func:`device_scope` / :func:`device_exists`: device placement;
* :func:`check_float_dtype`: JAX computes float64 only with ``jax_enable_x64``;
  :func:`compute_scope`: Keras's type promotion keeps float64 inside keras_lrp's computations.
"""
from __future__ import annotations

import contextlib
import sys
import threading
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import keras
import numpy as np

__all__ = ["NAME", "BACKENDS", "COMPILES_PER_SHAPE", "BATCH_ROWS", "XLA_BATCH_ROWS", "JIT_COMPILES",
           "compile_function", "static_batch", "to_numpy",
           "einsum", "vjp", "value_and_gradient", "time_loop", "available_devices",
           "device_scope", "device_exists", "check_float_dtype", "compute_scope", "TensorSpec", "Tensor"]

#: a tensor of the backend (``tf.Tensor``, ``jax.Array``, ``torch.Tensor``), in type hints
Tensor = Any


class TensorSpec(NamedTuple):
    """An argument of a compiled function: its shape (None for an axis of any length) and dtype."""

    shape: Tuple[Optional[int], ...]
    dtype: str


#: the backends keras_lrp runs on
BACKENDS = ("tensorflow", "jax", "torch")
#: the backend of this process (Keras fixes it at import)
NAME = keras.config.backend()

class _Float64Kept:
    """Keras's type promotion with float64 kept. Keras 3 promotes float64 to float32 on JAX and torch
    (``keras.src.backend.common.dtypes.BIT64_TO_BIT32_DTYPE``, JAX's behaviour without x64): a float64
    ``tanh`` (JAX), ``matmul``, ``maximum``, ``divide_no_nan`` (torch) returns float32, so a float64
    explanation (and Keras's own layers in it) would silently be float32. Inside the block float64
    stays float64 (the backend computes it: torch always, JAX with ``jax_enable_x64``); re-entrant
    and thread-safe (the change holds while any thread is inside)."""

    def __init__(self):
        self._lock, self._depth = threading.Lock(), 0
        from keras.src.backend.common import dtypes
        self._table = getattr(dtypes, "BIT64_TO_BIT32_DTYPE", None)
        self._saved = None if self._table is None else self._table.get("float64")

    @contextlib.contextmanager
    def __call__(self):
        if self._table is None:
            yield
            return
        with self._lock:
            self._depth += 1
            self._table["float64"] = "float64"
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    self._table["float64"] = self._saved


#: ``with compute_scope():`` around keras_lrp's own computations (explain calls, the self-check's
#: forward pass): on JAX and torch, Keras's type promotion keeps float64 there (see :class:`_Float64Kept`).
compute_scope: Callable[[], contextlib.AbstractContextManager] = (contextlib.nullcontext if NAME == "tensorflow"
                                                                 else _Float64Kept())


class _ImportedTensorFlowOnly:
    """Keras's lazy ``tensorflow`` module as its serializer sees it on the other backends: "available"
    only once TensorFlow is imported. ``serialize_keras_object`` asks ``tf.available and isinstance(obj,
    tf.TensorShape)`` (also ``DType``, ``TypeSpec``) for every object it serializes, e.g. the layer that
    ``Bidirectional``'s constructor serializes, and ``available`` imports TensorFlow to answer. An object
    can only be of a TensorFlow type once TensorFlow is imported, so the answers are the same, without
    the import: loading a Bi-LSTM under torch or JAX took TensorFlow's start-up (~5 s, its C++ log lines
    on stderr), and with the CUDA build of torch, TensorFlow's libraries loaded before triton crash the
    process (exit 139). Anything else (``tf.TensorShape`` when a config holds a type spec) is the lazy
    module's, which imports TensorFlow as before."""

    def __init__(self, lazy):
        self._lazy = lazy

    @property
    def available(self) -> bool:
        return "tensorflow" in sys.modules and self._lazy.available

    def __getattr__(self, name: str):
        return getattr(self._lazy, name)


def _serialize_without_importing_tensorflow() -> None:
    from keras.src.saving import serialization_lib

    lazy = getattr(serialization_lib, "tf", None)
    if lazy is not None and type(lazy).__name__ == "LazyModule":   # (another Keras: left as it is)
        serialization_lib.tf = _ImportedTensorFlowOnly(lazy)


if NAME != "tensorflow":
    _serialize_without_importing_tensorflow()

if NAME == "tensorflow":
    from . import tensorflow as _impl
elif NAME == "jax":
    from . import jax as _impl
elif NAME == "torch":
    from . import torch as _impl
else:
    raise ImportError(f"keras_lrp runs on the Keras backends {', '.join(BACKENDS)}; this process runs Keras on "
                      f"{NAME!r}. Set KERAS_BACKEND to one of them before Python starts.")


#: whether :func:`compile_function` compiles once per input shape (JAX) rather than once (TensorFlow:
#: axes of any length) or never (torch): callers then keep the number of shapes small (length buckets)
COMPILES_PER_SHAPE: bool = getattr(_impl, "COMPILES_PER_SHAPE", False)

#: compiled calls see batches of a multiple of this many rows, so that a sample's float64 result does not
#: depend on the batch size or its position in the batch (kernels round a row by where it falls in a block
#: of rows): 4 (TensorFlow, torch), 8 on JAX (XLA's CPU kernels round a row by its position in a block of 8)
BATCH_ROWS: int = getattr(_impl, "BATCH_ROWS", 4)
#: :data:`BATCH_ROWS` of a function compiled by XLA (``jit_compile=True`` on TensorFlow)
XLA_BATCH_ROWS = 8
#: whether :func:`compile_function` can compile with XLA (TensorFlow with ``jit_compile=True``; JAX always does)
JIT_COMPILES: bool = NAME in ("tensorflow", "jax")

#: ``compile_function(fn, specs, variables, jit_compile=False) -> call``: ``call(*arrays)`` runs ``fn`` on
#: the numpy arrays (matching ``specs``, a :class:`TensorSpec` per argument; a list argument takes a list
#: of specs) and returns its outputs as numpy arrays (same structure). ``fn`` may read the Keras
#: ``variables`` (every variable it reads): each call uses their current values. ``jit_compile``:
#: compiled by XLA, once per input shape (TensorFlow; JAX always compiles so, torch never).
compile_function: Callable = _impl.compile_function

#: ``to_numpy(tensor) -> np.ndarray``, to read (it may share the tensor's memory): ``np.asarray`` on TensorFlow
#: and JAX; on torch the tensor detached, copied. Not ``keras.ops.convert_to_numpy``: it calls ``np.array``,
#: which passes ``copy`` to the tensor's ``__array__``; TensorFlow's and torch's take none, and numpy 2
#: warns (a DeprecationWarning) on every call.
to_numpy: Callable = getattr(_impl, "to_numpy", np.asarray)

#: ``static_batch(call, rows) -> call``: ``call`` (from :func:`compile_function`, every argument
#: batch-first) for arguments of exactly ``rows`` rows. TensorFlow traces the function again with the
#: batch axis fixed (grappler folds the gradient's shape arithmetic); JAX already compiles per shape
#: and torch runs eagerly: ``call`` itself there.
static_batch: Callable = getattr(_impl, "static_batch", lambda call, rows: call)

#: ``einsum(equation, *operands)``: ``keras.ops.einsum``, except on TensorFlow (``tf.einsum``, whose
#: rounding does not depend on the batch size; see keras_lrp.backend.tensorflow)
einsum: Callable = getattr(_impl, "einsum", keras.ops.einsum)


def vjp(f: Callable, primals: Sequence, cotangents: Sequence) -> List:
    """``J_f^T cotangents`` per primal: the gradient of ``sum_i <f(*primals)[i], cotangents[i]>`` with
    respect to each of ``primals`` (float tensors; zeros for a primal no output depends on).
    ``f`` returns a list of tensors, one per cotangent."""
    return _impl.vjp(f, list(primals), list(cotangents))


def value_and_gradient(f: Callable, primals: Sequence) -> Tuple[object, List]:
    """``f(*primals) -> (scalar, aux)``: returns ``(aux, [d scalar / d primal for each primal])``
    (zeros for a primal the scalar does not depend on)."""
    return _impl.value_and_gradient(f, list(primals))


def _scan_time_loop(step: Callable, elems: Dict[str, object], carry: Tuple, n_out: int, reverse: bool = False,
                    differentiable: bool = False) -> Tuple[Tuple, Tuple]:
    """:data:`time_loop` with ``keras.ops.scan`` (``jax.lax.scan`` on JAX, a Python loop on torch)."""
    def body(c, e):
        c, outs = step(c, e)
        return tuple(c), tuple(outs)

    carry, outs = keras.ops.scan(body, tuple(carry), elems, reverse=reverse)
    return tuple(carry), tuple(outs)


#: ``time_loop(step, elems, carry, n_out, reverse=False, differentiable=False) -> (carry, outputs)``:
#: run ``step(carry, e) -> (carry, outputs)`` over axis 0 (time) of the tensors of the dict ``elems``,
#: ``e`` the dict of one step's slices; ``outputs`` (``n_out`` tensors per step) stacked to (time, ...)
#: and indexed by time also with ``reverse`` (which runs from the last step to the first). Outputs have
#: the dtype of ``carry[0]``. ``differentiable``: the loop is differentiated (the gradient baselines).
time_loop: Callable = getattr(_impl, "time_loop", _scan_time_loop)


def available_devices() -> List[str]:
    """This process's accelerators (GPUs), or, without any, its CPU devices, by name."""
    return _impl.available_devices()


def device_scope(name: str):
    """A context manager placing what is computed inside on device ``name``."""
    return _impl.device_scope(name)


def device_exists(name: str) -> bool:
    """Whether device ``name`` exists in this process."""
    return _impl.device_exists(name)


def check_float_dtype(dtype: str) -> None:
    """Raise when this process cannot compute in ``dtype`` ("float32" / "float64"): JAX without
    ``jax_enable_x64`` would compute float64 as float32, and so would a Keras whose type promotion
    :func:`compute_scope` cannot keep at float64."""
    _impl.check_float_dtype(dtype)
    if dtype == "float64" and not _keeps_float64():
        raise ValueError(f"this Keras ({keras.__version__}) computes float64 as float32 on the {NAME} backend "
                         "(its type promotion), so a float64 explanation would silently be float32. Use "
                         "dtype='float32', or the TensorFlow backend (KERAS_BACKEND=tensorflow) for float64.")


_FLOAT64_PROBE: List[bool] = []


def _keeps_float64() -> bool:
    """Whether the ops that Keras demotes to float32 on JAX / torch stay float64 in :func:`compute_scope`."""
    if not _FLOAT64_PROBE:
        with compute_scope():
            x = keras.ops.ones((2, 2), "float64")
            results = (keras.ops.matmul(x, x), keras.ops.tanh(x), keras.ops.maximum(x, 0), keras.ops.var(x))
            _FLOAT64_PROBE.append(all(keras.backend.standardize_dtype(r.dtype) == "float64" for r in results))
    return _FLOAT64_PROBE[0]
