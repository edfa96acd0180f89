"""The TensorFlow backend: ``tf.function`` (traced once, called through its flat entry point),
``GradientTape``, the tuned ``tf.while_loop`` over time, ``tf.device``."""
from __future__ import annotations

import threading
from typing import Callable, Dict, List, Tuple

import tensorflow as tf

from . import TensorSpec

__all__ = ["compile_function", "static_batch", "einsum", "vjp", "value_and_gradient", "time_loop", "available_devices", "device_scope",
           "device_exists", "check_float_dtype"]


def compile_function(fn: Callable, specs, variables, jit_compile: bool = False) -> Callable:
    """``fn`` traced once for ``specs`` (axes of any length where a spec says None); the variables it
    reads are captured by reference, so a call reads their current values. A call skips
    ``tf.function``'s dispatch and the concrete function's argument binding (~0.4 ms: a fifth of a
    one-sentence explanation at T = 20) through ``ConcreteFunction._call_flat``, which is private;
    where a TensorFlow version lacks it, the public call is used. :func:`static_batch` gives the same
    function traced for one batch size. ``jit_compile``: the trace runs compiled by XLA, which
    compiles it again for every new input shape (as on JAX)."""
    signature = _signature(list(specs))
    call = _flat_call(_trace(fn, signature, jit_compile))
    call.fn, call.signature, call.static, call.lock = fn, signature, {}, threading.Lock()
    call.jit_compile = jit_compile
    return call


def _trace(fn: Callable, signature, jit_compile: bool):
    # Without autograph: the walk's Python control flow is on static values only, and an error raised
    # while tracing (a rule refusing a configuration) reaches the user as itself, not as a StagingError.
    # One tf.function per signature: a tf.function holding a trace for any batch size would serve a
    # fixed batch size with that one (its traces are looked up by supertype).
    return tf.function(fn, input_signature=signature, autograph=False, jit_compile=jit_compile).get_concrete_function()


def _flat_call(concrete) -> Callable:
    call_flat = getattr(concrete, "_call_flat", None)

    def call(*args):
        if call_flat is None:
            out = concrete(*_map(tf.constant, args))
        else:
            out = call_flat([tf.constant(a) for a in _flatten(args)], concrete.captured_inputs)
        return _map(lambda t: t.numpy(), out)
    call.concrete_function = concrete   # its graph shows where each op runs
    return call


#: batch sizes one compiled function is traced for at most by :func:`static_batch` (beyond: the
#: dynamic-batch trace), so that a caller cycling through batch sizes does not trace without end
STATIC_BATCHES = 4


def static_batch(call: Callable, rows: int) -> Callable:
    """``call`` (from :func:`compile_function`) for arguments of exactly ``rows`` rows: its function
    traced again with the batch axis (axis 0 of every argument) fixed at ``rows``, on the first such
    call; other axes stay as the specs say. Grappler then folds the shape arithmetic of the
    gradient (the broadcasts and reductions a ``GradientTape`` adds): method="gi" takes 3-9% less
    CPU time at B = 256, T = 20 (bench/bench_explain.py --pin --cpu --tables 5). ``call`` itself for
    a function without traces (a test's spy) or once :data:`STATIC_BATCHES` batch sizes are traced."""
    if not hasattr(call, "static") or call.jit_compile:   # (XLA compiles every shape on its own)
        return call
    with call.lock:
        found = call.static.get(rows)
        if found is None and len(call.static) < STATIC_BATCHES:
            fixed = _map(lambda spec: tf.TensorSpec((rows,) + tuple(spec.shape[1:]), spec.dtype), call.signature)
            found = call.static[rows] = _flat_call(_trace(call.fn, fixed, call.jit_compile))
    return found or call


#: ``tf.einsum``, not ``keras.ops.einsum``: Keras's TensorFlow einsum rewrites contractions such as
#: "tbe,em->tbm" into one matmul over time x batch rows, whose rounding then depends on the batch size;
#: float64 explanations must be bit-identical across batch sizes (tests/test_reliability.py)
einsum = tf.einsum


# keras.tree's map_structure / flatten cost ~0.1 ms a call here; the arguments and outputs are lists
def _flatten(items) -> list:
    return [leaf for item in items for leaf in (_flatten(item) if isinstance(item, (list, tuple)) else [item])]


def _map(fn: Callable, items):
    return [_map(fn, i) if isinstance(i, (list, tuple)) else fn(i) for i in items]


def _signature(specs):
    if isinstance(specs, TensorSpec):
        return tf.TensorSpec(specs.shape, specs.dtype)
    return [_signature(s) for s in specs]


def vjp(f: Callable, primals: List, cotangents: List) -> List:
    with tf.GradientTape() as tape:
        tape.watch(primals)
        outs = f(*primals)
    return tape.gradient(outs, primals, output_gradients=cotangents,
                         unconnected_gradients=tf.UnconnectedGradients.ZERO)


def value_and_gradient(f: Callable, primals: List):
    with tf.GradientTape() as tape:
        tape.watch(primals)
        value, aux = f(*primals)
    return aux, tape.gradient(value, primals, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def time_loop(step: Callable, elems: Dict[str, tf.Tensor], carry: Tuple[tf.Tensor, ...], n_out: int,
              reverse: bool = False, differentiable: bool = False) -> Tuple[Tuple[tf.Tensor, ...], Tuple[tf.Tensor, ...]]:
    """Unlike ``tf.scan`` (and ``keras.ops.scan``) it stacks only the ``n_out`` outputs (not the
    carry). The relevance loops (``differentiable=False``) read each step's slice of ``elems`` in
    place instead of first copying them into tensor lists: less memory traffic and fewer allocations
    per call. The forward loops are also differentiated (the gradient baselines): they read through
    tensor lists, whose gradients are one slice per step (a slice's gradient would be a full-size
    tensor per step). The loop's ``maximum_iterations`` is its length: XLA (``jit_compile``) needs the
    bound to differentiate it."""
    steps = tf.shape(next(iter(elems.values())))[0]
    arrays = tuple(tf.TensorArray(carry[0].dtype, size=steps) for _ in range(n_out))
    if differentiable:
        lists = {k: tf.TensorArray(v.dtype, size=steps).unstack(v) for k, v in elems.items()}

        def read(t):
            return {k: v.read(t) for k, v in lists.items()}
    else:
        def read(t):
            # one StridedSlice op per tensor on shared bounds (``v[t]`` builds its bounds per tensor:
            # four ops a read, a quarter of a relevance step's ops at batch 1)
            begin = tf.reshape(t, [1])
            end = begin + 1
            return {k: tf.strided_slice(v, begin, end, [1], shrink_axis_mask=1) for k, v in elems.items()}

    def body(t, carry, arrays):
        carry, outs = step(carry, read(t))
        return (t - 1 if reverse else t + 1), carry, tuple(a.write(t, o) for a, o in zip(arrays, outs))

    def cond(t, carry, arrays):
        return t >= 0 if reverse else t < steps

    start = steps - 1 if reverse else tf.constant(0)
    _, carry, arrays = tf.while_loop(cond, body, (start, tuple(carry), arrays), maximum_iterations=steps)
    return carry, tuple(a.stack() for a in arrays)


def available_devices() -> List[str]:
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return [d.name for d in devices]


def device_scope(name: str):
    return tf.device(name)


def _device_key(name: str):
    spec = tf.DeviceSpec.from_string(name)
    return (spec.device_type or "").upper(), spec.device_index or 0


def device_exists(name: str) -> bool:
    return _device_key(name) in {_device_key(d.name) for d in tf.config.list_logical_devices()}


def check_float_dtype(dtype: str) -> None:
    return None
