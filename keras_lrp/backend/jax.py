"""The JAX backend: ``jax.jit`` with the Keras variables passed as arguments, ``jax.vjp`` /
``jax.grad``, ``jax.default_device``; float64 needs ``jax_enable_x64``."""
from __future__ import annotations

from typing import Callable, List

import jax
import numpy as np
from keras import StatelessScope, tree

from . import compute_scope

__all__ = ["compile_function", "vjp", "value_and_gradient", "available_devices", "device_scope", "device_exists",
           "check_float_dtype", "enable_float64"]


#: jax.jit traces and compiles once per input shapes
COMPILES_PER_SHAPE = True

#: XLA's CPU kernels round a float64 row by its position in a block of 8 rows (with 4: rows 5, 13, 23 of 24
#: differed from the same samples explained alone, in the last bit; with 8: none, measured)
BATCH_ROWS = 8


def compile_function(fn: Callable, specs, variables, jit_compile: bool = True) -> Callable:
    """``fn`` under ``jax.jit``, traced (and compiled by XLA) once per input shapes, whatever
    ``jit_compile`` says. The variables are arguments of the compiled function, mapped onto the Keras
    variables while ``fn`` is traced (``keras.StatelessScope``): every call passes their current
    values, so nothing is frozen into the compiled code."""
    variables = list(variables)

    def pure(values, args):
        with StatelessScope(state_mapping=list(zip(variables, values))):
            return fn(*args)

    jitted = jax.jit(pure)

    def call(*args):
        with compute_scope():   # traced inside, when the shapes are new
            out = jitted([v.value for v in variables], list(args))
        return tree.map_structure(np.asarray, out)
    return call


def vjp(f: Callable, primals: List, cotangents: List) -> List:
    outs, pullback = jax.vjp(lambda *p: list(f(*p)), *primals)
    return list(pullback([c.astype(o.dtype) for c, o in zip(cotangents, outs)]))


def value_and_gradient(f: Callable, primals: List):
    grads, aux = jax.grad(f, argnums=tuple(range(len(primals))), has_aux=True)(*primals)
    return aux, list(grads)


def _normal(name: str) -> str:
    """"/device:GPU:1", "cuda:1", "gpu:1" -> "gpu:1"; "CPU" -> "cpu:0"."""
    kind, _, index = name.lower().replace("/device:", "").lstrip("/").partition(":")
    return f"{'gpu' if kind in ('gpu', 'cuda', 'rocm') else kind}:{index or 0}"


def _name(device) -> str:
    return _normal(f"{device.platform}:{device.id}")


def available_devices() -> List[str]:
    gpus = [d for d in jax.devices() if d.platform != "cpu"]
    return [_name(d) for d in (gpus or jax.devices("cpu"))]


def _find(name: str):
    wanted = _normal(name)
    devices = jax.devices() + ([] if jax.default_backend() == "cpu" else jax.devices("cpu"))
    return next((d for d in devices if _name(d) == wanted), None)


def device_scope(name: str):
    device = _find(name)
    if device is None:
        raise ValueError(f"device {name!r} does not exist in this process; it has {available_devices()}.")
    return jax.default_device(device)


def device_exists(name: str) -> bool:
    return _find(name) is not None


def float64_enabled() -> bool:
    return bool(jax.config.read("jax_enable_x64"))


def enable_float64() -> None:
    """Let JAX compute in float64 (``jax_enable_x64``): for start-up code that keras_lrp controls
    (the CLI, its workers), before any array exists."""
    jax.config.update("jax_enable_x64", True)


def check_float_dtype(dtype: str) -> None:
    if dtype == "float64" and not float64_enabled():
        raise ValueError("dtype='float64' on the JAX backend needs 64-bit JAX: without it JAX computes in "
                         "float32. Set the environment variable JAX_ENABLE_X64=1 before Python starts (or call "
                         "jax.config.update('jax_enable_x64', True) before creating any array), or use "
                         "dtype='float32'.")
