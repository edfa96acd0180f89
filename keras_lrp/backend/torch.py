"""The PyTorch backend: eager calls without autograd (``torch.no_grad``), ``torch.autograd`` for the
vector-Jacobian products and the gradient baselines, Keras's device scope."""
from __future__ import annotations

from typing import Callable, List

import keras
import numpy as np
import torch
from keras import tree

from . import compute_scope

__all__ = ["compile_function", "to_numpy", "vjp", "value_and_gradient", "available_devices", "device_scope", "device_exists",
           "check_float_dtype"]


def compile_function(fn: Callable, specs, variables, jit_compile: bool = False) -> Callable:
    """``fn`` run eagerly on every call (the variables are read as they are), without recording
    autograd graphs except where :func:`vjp` / :func:`value_and_gradient` ask for one. Nothing here
    compiles with XLA: ``jit_compile=True`` is refused by the explainer before it gets here."""
    def call(*args):
        with torch.no_grad(), compute_scope():
            out = fn(*tree.map_structure(keras.ops.convert_to_tensor, list(args)))
        return tree.map_structure(to_numpy, out)
    return call


def to_numpy(x) -> np.ndarray:
    """A copy of ``x`` as a numpy array (``np.asarray`` fails on a tensor that requires grad, such as a
    weight; see keras_lrp.backend.to_numpy)."""
    if isinstance(x, torch.Tensor) and x.dtype != torch.bfloat16:   # (bfloat16: numpy has none)
        return x.detach().cpu().numpy().copy()
    return keras.ops.convert_to_numpy(x)


def _leaves(primals: List) -> List[torch.Tensor]:
    return [p.detach().requires_grad_(True) for p in primals]


def _grads(outputs: List, leaves: List, cotangents) -> List[torch.Tensor]:
    """The gradients of ``outputs`` (weighted by ``cotangents``, or None for scalars) with respect to
    ``leaves``; zeros where nothing depends on a leaf."""
    pairs = [(o, c) for o, c in zip(outputs, cotangents) if o.requires_grad]
    grads = [None] * len(leaves)
    if pairs:
        grads = torch.autograd.grad([o for o, _ in pairs], leaves,
                                    grad_outputs=None if pairs[0][1] is None else [c for _, c in pairs],
                                    allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads)]


def vjp(f: Callable, primals: List, cotangents: List) -> List:
    with torch.enable_grad():
        leaves = _leaves(primals)
        return [g.detach() for g in _grads(list(f(*leaves)), leaves, cotangents)]


def value_and_gradient(f: Callable, primals: List):
    with torch.enable_grad():
        leaves = _leaves(primals)
        value, aux = f(*leaves)
        grads = _grads([value], leaves, [None])
    return tree.map_structure(lambda t: t.detach(), aux), [g.detach() for g in grads]


def available_devices() -> List[str]:
    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


def _normal(name: str) -> str:
    kind, _, index = name.lower().replace("/device:", "").lstrip("/").partition(":")
    kind = "cuda" if kind in ("gpu", "cuda") else kind
    return kind if kind == "cpu" else f"{kind}:{index or 0}"


def device_scope(name: str):
    return keras.device(_normal(name))


def device_exists(name: str) -> bool:
    return _normal(name) in {_normal(d) for d in available_devices()} or _normal(name) == "cpu"


def check_float_dtype(dtype: str) -> None:
    return None
