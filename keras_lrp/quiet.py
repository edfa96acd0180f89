"""Quiet by default: TensorFlow's and Ray's start-up logs hidden, repeated warnings summed up.

* :func:`start_backend_quietly` starts the Keras backend (``KERAS_BACKEND``) the way keras-lrp's
  own entry points need it: TensorFlow through :func:`import_tensorflow_quietly`, which imports it
  with its C++ start-up lines (oneDNN, CUDA probing, CPU features) sent to ``/dev/null`` (TensorFlow
  2.21 prints them even with ``TF_CPP_MIN_LOG_LEVEL=3``); JAX with 64-bit floats enabled, so that
  ``dtype="float64"`` computes in float64. The ``keras-lrp`` command, the bench scripts and the Ray
  workers start this way (``--debug`` shows TensorFlow's lines); TensorFlow is never imported for
  another backend.
* :func:`quiet_ray` hides Ray's own logs (its start-up lines, Ray Data's execution plan and the
  core worker's C++ lines) around a Ray run that keras-lrp starts.
* :func:`summarized_warnings` collects the warnings of a long run and reports each cause once, with
  its count, when the run ends: ``keras-lrp evaluate`` printed one overflow warning per batch into
  its progress bar. Warnings that add up (:class:`SummableWarning`) merge into one with the totals
  ("375 of 2210 explanations contain inf/NaN: ...").

Nothing here imports Keras, TensorFlow, JAX or Ray at module level.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from typing import Callable, Dict, Hashable, Iterator, List, Optional, Sequence, Tuple

__all__ = ["SummableWarning", "summarized_warnings", "summarize", "import_tensorflow_quietly", "quiet_ray",
           "stderr_to_devnull", "keras_backend_name", "check_backend_installed", "start_backend_quietly"]


class SummableWarning(Warning):
    """A warning whose occurrences add up: those of one :meth:`cause` merge into one warning that
    states the totals (:meth:`merge`). Subclasses keep their numbers as attributes."""

    def cause(self) -> Hashable:
        """What makes two warnings the same (default: the message)."""
        return str(self)

    @classmethod
    def merge(cls, items: Sequence["SummableWarning"]) -> "SummableWarning":
        """One warning standing for ``items`` (all of this class and of one cause)."""
        return items[0]


def summarize(caught: Sequence[warnings.WarningMessage]) -> List[Tuple[type, Warning, int]]:
    """``(category, warning, count)`` per cause, in order of first occurrence: summable warnings
    merged (count = how many were merged), others grouped by category and message."""
    groups: Dict[Hashable, List[warnings.WarningMessage]] = {}
    for w in caught:
        message = w.message
        key = (w.category, message.cause() if isinstance(message, SummableWarning) else str(message))
        groups.setdefault(key, []).append(w)
    out = []
    for (category, _), items in groups.items():
        first = items[0].message
        if isinstance(first, SummableWarning):
            merged = type(first).merge([w.message for w in items])
        else:
            merged = first if isinstance(first, Warning) else category(str(first))
        out.append((category, merged, len(items)))
    return out


@contextlib.contextmanager
def summarized_warnings(report: Optional[Callable[[str], None]] = None) -> Iterator[None]:
    """Collect the warnings raised inside the block; when it ends (also by an exception), report
    each cause once.

    Args:
        report: called with one line per cause (a summable warning's merged message; others with
            ``" (N times)"`` when repeated), e.g. to print ``keras-lrp: warning: ...``. None:
            re-issue them with :func:`warnings.warn` (one per cause, the caller's filters apply).
    """
    collected: List[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield
            finally:
                collected = list(caught)
    finally:
        for category, message, count in summarize(collected):
            if report is not None:
                text = str(message)
                report(text if isinstance(message, SummableWarning) or count == 1 else f"{text} ({count} times)")
            else:
                warnings.warn(message, category, stacklevel=3)


@contextlib.contextmanager
def stderr_to_devnull() -> Iterator[None]:
    """Send file descriptor 2 (what C++ libraries write to) to ``/dev/null`` inside the block.
    Python exceptions still propagate (stderr is restored first). No-op without a real stderr."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(fd), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def import_tensorflow_quietly(debug: bool = False) -> None:
    """Import TensorFlow (and let it probe its devices) without its C++ start-up lines, and set
    its Python logger to errors only. ``TF_CPP_MIN_LOG_LEVEL`` defaults to 3 for later C++ logs.
    With ``debug=True``, or when TensorFlow is already imported, only the defaults are set."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if debug:
        return
    if "tensorflow" not in sys.modules:
        with stderr_to_devnull():
            import tensorflow as tf

            tf.config.list_physical_devices()
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:   # absl comes with TensorFlow; nothing to quiet without it
        pass


def keras_backend_name() -> str:
    """The backend Keras runs on (or will, once imported), found as Keras finds it: the running Keras's,
    else ``KERAS_BACKEND``, else the ``backend`` of ``keras.json`` in ``KERAS_HOME`` (default
    ``~/.keras``), else "tensorflow". Imports nothing."""
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "config"):
        return keras.config.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        import json

        with open(os.path.join(home, "keras.json")) as f:
            return str(json.load(f).get("backend") or "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def check_backend_installed(name: Optional[str] = None) -> str:
    """Raise an ImportError that says how to fix it when the Keras backend ``name`` (default: Keras's
    choice, :func:`keras_backend_name`) is not installed, before anything imports Keras; returns the name."""
    import importlib.util

    name = name or keras_backend_name()
    # (TensorFlow is installed with keras-lrp, and is not looked up: nothing may touch it before it is needed)
    if name in ("jax", "torch") and importlib.util.find_spec(name) is None:
        raise ImportError(f"Keras is set to run on {name} (KERAS_BACKEND or keras.json), which is not installed: "
                          f'pip install "keras-lrp[{name}]", or choose another backend, e.g. KERAS_BACKEND=tensorflow.')
    return name


def start_backend_quietly(backend: Optional[str] = None, debug: bool = False) -> str:
    """Start the Keras backend before keras_lrp computes anything; returns its name.

    Args:
        backend: the backend to run on ("tensorflow", "jax", "torch"): set as ``KERAS_BACKEND`` when
            Keras is not imported yet (a Ray worker gets its driver's); a RuntimeError if Keras already
            runs on another. None: Keras's own choice (:func:`keras_backend_name`).
        debug: show TensorFlow's start-up lines.

    TensorFlow is imported quietly (:func:`import_tensorflow_quietly`); JAX gets 64-bit floats
    (``JAX_ENABLE_X64=1`` unless set otherwise), so that ``dtype="float64"`` is float64; torch needs
    nothing. No other backend's framework is imported.
    """
    if backend is not None and "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = backend
    name = check_backend_installed()
    if backend is not None and name != backend:
        raise RuntimeError(f"this process already runs Keras on {name!r}, not on {backend!r}: start it with "
                           f"KERAS_BACKEND={backend}.")
    if name == "tensorflow":
        import_tensorflow_quietly(debug=debug)
    elif name == "jax":
        os.environ.setdefault("JAX_ENABLE_X64", "1")
        if "jax" in sys.modules and os.environ["JAX_ENABLE_X64"].lower() in ("1", "true"):
            sys.modules["jax"].config.update("jax_enable_x64", True)   # JAX read the variable before
    return name


# Ray's logs: its Python loggers, Ray Data's (read from RAY_DATA_LOG_LEVEL when ray.data configures
# them), and the C++ core worker's (RAY_BACKEND_LOG_LEVEL, read when ray.init starts it).
_RAY_ENV = {"RAY_DATA_LOG_LEVEL": "ERROR", "RAY_BACKEND_LOG_LEVEL": "fatal"}
_RAY_LOGGERS = ("ray", "ray.data")


@contextlib.contextmanager
def quiet_ray(debug: bool = False) -> Iterator[Callable[[], contextlib.AbstractContextManager]]:
    """Hide Ray's logs inside the block (Ray's and Ray Data's loggers at ERROR, the C++ core
    worker's at FATAL); restores them afterwards. Yields a context manager to wrap ``ray.init``
    in: it also sends the C++ start-up lines (which ignore the log level) to ``/dev/null``.
    Two kinds of warnings that are about Ray's own code, not the user's, are ignored inside the
    block: Ray's deprecation warnings (Ray Data sets its deprecated options itself), and JAX's
    "os.fork() was called" (Ray starts its processes with ``subprocess``: the child only blocks a
    signal and execs, taking none of JAX's locks). ``debug=True`` changes nothing."""
    if debug:
        yield contextlib.nullcontext
        return
    saved_env = {k: os.environ.get(k) for k in _RAY_ENV}
    loggers = [logging.getLogger(name) for name in _RAY_LOGGERS]
    saved_levels = [lg.level for lg in loggers]
    for k, v in _RAY_ENV.items():
        os.environ.setdefault(k, v)
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray(\.|$)")
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
            yield stderr_to_devnull
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for lg, level in zip(loggers, saved_levels):
            lg.setLevel(level)
