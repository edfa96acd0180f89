"""What the experiments share: the compared methods, their relevance, argument checks, figures
and the progress bar (``keras.utils.Progbar``)."""
from __future__ import annotations

import contextlib
import sys
from typing import Optional, Sequence, Tuple, Union

import numpy as np

#: method name -> keyword arguments of :func:`keras_lrp.explain` (``random`` needs none).
METHOD_KWARGS = {
    "lrp": dict(method="lrp", rule="all"),
    "gi": dict(method="gi"),
    "sa": dict(method="sa"),
    "random": None,
    "lrp_prop": dict(method="lrp", rule="prop"),
    "lrp_half": dict(method="lrp", rule="half"),
    # the perturbation / path baselines (keras_lrp.baselines) with their default options
    "ig": dict(method="ig"),
    "occlusion": dict(method="occlusion"),
    "shapley": dict(method="shapley"),
}
#: The methods word deletion knows, in the order of the tables.
DELETION_METHODS = tuple(METHOD_KWARGS)
#: The methods run when none are named (the baselines ig / occlusion / shapley cost 10-700 model
#: evaluations per sentence: name them with ``methods=`` / ``--methods``).
DEFAULT_METHODS = ("lrp", "gi", "sa", "random", "lrp_prop", "lrp_half")
#: The methods compared on the toy task.
TOY_METHODS = DELETION_METHODS
#: How a deleted word is replaced (see the module docstring).
REPLACEMENTS = ("zero", "unk", "pad")

LABELS = {"lrp": "LRP (all)", "gi": "GI", "sa": "SA", "random": "random",
           "lrp_prop": "LRP (prop)", "lrp_half": "LRP (half)", "ig": "IG", "occlusion": "occlusion",
           "shapley": "Shapley"}
STYLES = {"lrp": dict(color="#d62728", lw=2.2, marker="o"),
           "gi": dict(color="#1f77b4", lw=1.8, marker="s"),
           "sa": dict(color="#2ca02c", lw=1.8, marker="^"),
           "random": dict(color="#555555", lw=1.5, ls="--", marker="x"),
           "lrp_prop": dict(color="#ff7f0e", lw=1.5, ls=":", marker="d"),
           "lrp_half": dict(color="#9467bd", lw=1.5, ls=":", marker="v"),
           "ig": dict(color="#8c564b", lw=1.8, marker="P"),
           "occlusion": dict(color="#e377c2", lw=1.8, marker="h"),
           "shapley": dict(color="#17becf", lw=1.8, marker="*")}


def check_methods(methods: Union[str, Sequence[str]], known: Sequence[str]) -> Tuple[str, ...]:
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = tuple(methods)
    if not methods:
        raise ValueError(f"give at least one method; known: {', '.join(known)}")
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods are listed twice: {methods}")
    return methods


def check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def method_relevance(model, inputs, target, method: str, *, eps: float = 1e-3,
                     bias_factor: float = 0.0, dtype: str = "float32", batch_size: int = 256,
                     rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Relevance per timestep, (batch, time), of ``method`` (one of :data:`DELETION_METHODS`).

    ``inputs`` are (batch, time, features) floats or (batch, time) token ids; ``target`` is an
    int or one per sample. ``random`` draws uniform numbers from ``rng`` (required for it).
    """
    if method not in METHOD_KWARGS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(DELETION_METHODS)}")
    x = np.asarray(inputs)
    if method == "random":
        if rng is None:
            raise ValueError("method 'random' needs rng=np.random.default_rng(seed)")
        return rng.random(x.shape[:2])
    from ..explainer import explain

    e = explain(model, x, target, eps=eps, bias_factor=bias_factor, dtype=dtype,
                batch_size=batch_size, **METHOD_KWARGS[method])
    with np.errstate(over="ignore", invalid="ignore"):   # an exploding rule (prop) may overflow
        return e.word_relevance


@contextlib.contextmanager
def quiet_retracing():
    """Silence TensorFlow's "triggered tf.function retracing" warnings while the explainers of
    several methods are compiled (expected here, and harmless) and sequence lengths vary."""
    import tensorflow as tf

    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def quiet_run():
    """Around a run of several methods over many batches: TensorFlow's retracing warnings silenced
    (:func:`quiet_retracing`) and every other warning issued once per cause when the run ends, with
    its count (the 'prop' rule's overflow warning came once per batch: 10-24 per evaluation)."""
    from ..quiet import summarized_warnings

    with summarized_warnings(), quiet_retracing():
        yield


def inline_figure(**kwargs):
    """A pyplot-free matplotlib Figure that Jupyter shows inline (as PNG) without ``%matplotlib``."""
    import io

    from matplotlib.figure import Figure

    class _InlineFigure(Figure):
        def _repr_png_(self) -> bytes:
            buf = io.BytesIO()
            self.savefig(buf, format="png")
            return buf.getvalue()

    return _InlineFigure(**kwargs)


class ProgressBar:
    """``keras.utils.Progbar`` on stderr (Keras prints it on stdout, where results go); a no-op
    when disabled. Keras is imported only when the bar is enabled."""

    def __init__(self, total: int, unit: str, enabled: bool = True):
        self._bar = None
        if enabled and total > 0:
            from keras.utils import Progbar

            with contextlib.redirect_stdout(sys.stderr):   # Progbar checks isatty() of sys.stdout
                self._bar = Progbar(total, unit_name=unit)

    def add(self, n: int) -> None:
        """``n`` more units are done."""
        if self._bar is not None:
            with contextlib.redirect_stdout(sys.stderr):
                self._bar.add(n)
