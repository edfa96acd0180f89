"""Load LSTM model files written by Keras 3, Keras 2.x and tf.keras 2.x as Keras 3 models.

``keras.models.load_model`` of Keras 3 cannot read many Keras 2 era ``.h5`` files (Bidirectional
LSTM: "Could not locate class 'LSTM'", keras-team/keras#19898; the ``time_major`` keyword of
tf.keras LSTM/GRU configs; ``batch_input_shape``; seed-era ``RNN(LRP_LSTMCell)`` files).
:func:`load_model` handles them:

* ``.keras`` archives: the architecture (``config.json``) is screened for ``Lambda`` layers and
  unknown classes, then Keras 3 loads the file (``safe_mode`` applies). If Keras 3 cannot
  (e.g. a ``.keras`` written by tf.keras 2.x), the architecture is rebuilt as for ``.h5`` below
  and the weights are read with ``model.load_weights``.
* ``.h5`` files: the ``model_config`` JSON attribute is translated layer by layer into plain
  Keras 3 constructor calls (no Keras deserialisation of class names taken from the file) and
  the weights are assigned by layer name, in the order stored in the file
  (``model_weights/<layer>/weight_names``), with every shape checked.
* tf.keras functional models with tensor syntax between layers (``h[:, -1]``,
  ``tf.reduce_sum(w * h, axis=1)``, ``tf.concat``...), stored as ``TFOpLambda`` /
  ``SlicingOpLambda`` layers that name a TensorFlow function by a string: the graph is rebuilt
  by calling the layers and the equivalent ``keras.ops`` functions on ``keras.Input`` in
  topological order, so the op nodes are Keras 3 ops. Only an allow-list of function names is
  rebuilt (``__operators__.getitem``, ``reduce_sum`` / ``reduce_mean``, ``concat``, ``stack``,
  ``reshape``, ``expand_dims``, ``transpose``, ``squeeze``, ``cast``, ``add`` / ``subtract`` /
  ``multiply`` / ``truediv`` / ``divide``, ``negative``, ``softmax``, ``sigmoid``); the name is
  looked up in that table, never imported or evaluated, and every argument is type-checked.

Nothing goes through ``pickle``. The file type is recognised from its first bytes, not its
extension. Keras 2's ``hard_sigmoid`` (``clip(0.2 x + 0.5, 0, 1)``, not Keras 3's
``clip(x / 6 + 0.5, 0, 1)``) is kept as :func:`keras2_hard_sigmoid` in files written by Keras 2.

Model files are untrusted data: nothing outside the given file is ever read (HDF5 external
storage, external / soft links and virtual datasets are refused), every declared size is
checked before anything large is read or allocated, and so is every chunk of a compressed
dataset (:mod:`.chunks`; see :func:`load_model` for the limits). Non-finite weights are named in
a ``RuntimeWarning``.

Errors (all one line, naming the file, raised before the model is built; all subclasses of
:class:`ModelFileError`):

* :class:`ModelFileNotFoundError` (a ``FileNotFoundError`` and a ``ValueError``): no such file.
* :class:`ModelFileError` (``ValueError``): not a Keras model file (text, truncated or corrupt
  file, ``.h5`` without ``model_config`` such as a weights-only file, broken JSON, weights that
  do not fit the architecture).
* :class:`UnsafeModelError` (``ValueError``): a ``Lambda`` layer (opt in with
  ``safe_mode=False``) or a class / activation that is not built into Keras (opt in with
  ``custom_objects={"Name": cls}``), or a file pointing at data outside itself (no opt-in).
* :class:`UnsupportedModelError` (``ValueError``): a valid file using something this loader
  cannot rebuild faithfully (nested models, ``time_major=True``, a TensorFlow op layer whose
  function is not on the allow-list or whose arguments are not understood, ...).
* :class:`ModelTooLargeError` (``ValueError``): the file declares more data than the limits
  allow (raise them with ``max_bytes=``), or a compressed chunk would unpack to more than its
  dataset declares (no opt-in).
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import re
import stat
import warnings
import zipfile
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import h5py
import keras
import numpy as np

from .. import backend  # noqa: F401  (on JAX / torch, Keras's serializer then imports no TensorFlow)
from ..cells import LRP_LSTMCell
from .chunks import audit_chunks, check_filters
from .cudnn import canonical_shapes, canonical_weights, cudnn_slots, to_canonical
from .errors import (ModelFileError, ModelFileNotFoundError, ModelTooLargeError, UnsafeModelError,
                     UnsupportedModelError)
from .plan import _Plan, _build, _plan_checked
from .stateful import state_bytes, stateless
from .translate import KERAS2_ACTIVATIONS, _decode, _one_line, _Translator, keras2_hard_sigmoid
from .weights import (_assign_weights, _check_weight_shapes, _h5_weight_datasets,
                      _order_by_sublayer, _read_h5_weights, describe_non_finite,
                      non_finite_weights)

__all__ = [
    "load_model",
    "keras2_hard_sigmoid",
    "KERAS2_ACTIVATIONS",
    "ModelFileError",
    "ModelFileNotFoundError",
    "UnsafeModelError",
    "UnsupportedModelError",
    "ModelTooLargeError",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_DEPTH",
    "MAX_HDF5_OBJECTS",
    "MAX_LAYERS",
]

PathLike = Union[str, "os.PathLike[str]"]


_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"


# --------------------------------------------------------------------------------------------
# Untrusted files: limits checked before anything large is read or allocated
# --------------------------------------------------------------------------------------------
#: Largest architecture (``model_config`` attribute, ``config.json``) read, in bytes.
MAX_CONFIG_BYTES = 16 * 2**20
#: Deepest nesting of JSON arrays / objects accepted in an architecture (Keras configs use ~15).
MAX_CONFIG_DEPTH = 100
#: Most HDF5 links (groups and datasets) plus stored chunks walked in one file, and most members
#: of a ``.keras`` zip.
MAX_HDF5_OBJECTS = 100_000
#: Most layers in a model's top-level layer list (each costs time to build).
MAX_LAYERS = 5_000
#: Without ``max_bytes=``, a file may declare up to this many bytes of weights (and of unpacked
#: archive members) per byte of its own size, plus :data:`WEIGHT_BYTES_FLOOR`. Keras stores
#: weights uncompressed, so a genuine file declares at most about its own size.
WEIGHT_BYTES_PER_FILE_BYTE = 16
WEIGHT_BYTES_FLOOR = 16 * 2**20


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def _weight_budget(file_size: int, max_bytes: Optional[int]) -> int:
    if max_bytes is not None:
        return max_bytes
    return WEIGHT_BYTES_PER_FILE_BYTE * file_size + WEIGHT_BYTES_FLOOR


def _too_large(path: str, what: str, declared: int, budget: int) -> ModelTooLargeError:
    return ModelTooLargeError(
        f"{path}: {what} {_mib(declared)} ({declared:,} bytes), more than the limit of "
        f"{_mib(budget)} for this file; if you trust it, pass load_model(..., "
        f"max_bytes={max(declared, budget + 1)}).")


_JSON_STRING_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')


def _json_depth(text: str) -> int:
    """Deepest nesting of ``[`` / ``{`` in JSON ``text``, without recursion (strings skipped)."""
    codes = np.frombuffer(_JSON_STRING_RE.sub('""', text).encode("utf-8", "replace"), np.uint8)
    opens = (codes == ord("[")) | (codes == ord("{"))
    brackets = opens | (codes == ord("]")) | (codes == ord("}"))
    steps = np.where(opens[brackets], 1, -1).astype(np.int32)
    return int(np.cumsum(steps).max(initial=0))


def _parse_json(path: str, raw: Any, what: str) -> Any:
    """Parse an architecture: size and nesting depth checked before ``json.loads``."""
    if isinstance(raw, np.ndarray) and raw.shape == ():
        raw = raw.item()
    if isinstance(raw, (bytes, bytearray)):
        if len(raw) > MAX_CONFIG_BYTES:
            raise _config_too_large(path, what, len(raw))
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelFileError(f"{path}: {what} is not UTF-8 text: {exc.reason}.") from None
    if not isinstance(raw, str):
        raise ModelFileError(f"{path}: {what} is not a JSON text (found {type(raw).__name__}).")
    if len(raw) > MAX_CONFIG_BYTES:
        raise _config_too_large(path, what, len(raw))
    depth = _json_depth(raw)
    if depth > MAX_CONFIG_DEPTH:
        raise ModelFileError(
            f"{path}: {what} is nested {depth} levels deep (limit {MAX_CONFIG_DEPTH}; real Keras "
            "models use about 15); it is not a Keras architecture. To accept it anyway, raise "
            "keras_lrp.io.MAX_CONFIG_DEPTH.")
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ModelFileError(f"{path}: {what} is not valid JSON: "
                             f"{_one_line(exc)[:200]}") from None
    body = parsed.get("config") if isinstance(parsed, dict) else None
    layers = body.get("layers") if isinstance(body, dict) else body
    if isinstance(layers, list) and len(layers) > MAX_LAYERS:
        raise ModelTooLargeError(f"{path}: {what} lists {len(layers):,} layers (limit {MAX_LAYERS:,}, "
                                 "keras_lrp.io.MAX_LAYERS); raise the limit for a trusted file.")
    return parsed


def _config_too_large(path: str, what: str, size: int) -> ModelTooLargeError:
    return ModelTooLargeError(
        f"{path}: {what} is {_mib(size)}, more than the {_mib(MAX_CONFIG_BYTES)} an architecture "
        "may take (keras_lrp.io.MAX_CONFIG_BYTES); a real one is a few KB.")


def _audit_hdf5(path: str, handle: h5py.File, budget: int, where: str = "") -> int:
    """Refuse an HDF5 file that could make HDF5 read anything but its own bytes, before any
    dataset is read: soft / external / user-defined links, datasets kept in external files,
    virtual datasets, filters that need plugins; and files declaring more than ``budget`` bytes
    of datasets or more than :data:`MAX_HDF5_OBJECTS` links and stored chunks.

    Chunked datasets are checked chunk by chunk before HDF5 decodes any (see :mod:`.chunks`).

    Returns:
        the total declared size of all datasets, in bytes (``prod(shape) * itemsize``).
    """
    state = {"count": 0, "total": 0}
    file_size = handle.id.get_filesize()

    def visit(name: str, link: Any) -> Optional[ModelFileError]:
        # An exception may not cross HDF5's C iteration: a returned error stops the walk.
        try:
            check(name, link)
        except ModelFileError as exc:
            return exc
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            return ModelFileError(f"{path}: {where}the HDF5 structure cannot be read (truncated "
                                  f"or corrupt file?): {_one_line(exc)[:200]}")
        return None

    def check(name: str, link: Any) -> None:
        state["count"] += 1
        if state["count"] > MAX_HDF5_OBJECTS:
            raise ModelTooLargeError(
                f"{path}: {where}holds more than {MAX_HDF5_OBJECTS:,} HDF5 objects "
                "(keras_lrp.io.MAX_HDF5_OBJECTS); a Keras model file holds a few per layer.")
        shown = _one_line(repr(name))[:120]
        if isinstance(link, h5py.SoftLink):
            raise UnsafeModelError(
                f"{path}: {where}HDF5 entry {shown} is a soft link (to {link.path!r}); "
                "load_model refuses links in model files. Re-save the model with model.save().")
        if isinstance(link, h5py.ExternalLink):
            raise UnsafeModelError(
                f"{path}: {where}HDF5 entry {shown} is an external link to another file "
                f"({_one_line(link.filename)[:120]!r}); load_model never reads outside the file "
                "it is given. Re-save the model with model.save().")
        if not isinstance(link, h5py.HardLink):
            raise UnsafeModelError(f"{path}: {where}HDF5 entry {shown} is a "
                                   f"{type(link).__name__}, not a plain group or dataset.")
        obj = handle.get(name)
        if isinstance(obj, h5py.Dataset):
            filters = _audit_dataset(path, where, shown, obj)
            shape = obj.shape
            if shape is not None:
                state["total"] += math.prod(int(d) for d in shape) * obj.dtype.itemsize
            if state["total"] > budget:
                raise _too_large(path, f"{where}declares datasets of at least", state["total"],
                                 budget)
            state["count"] += audit_chunks(path, where, shown, obj, filters, file_size,
                                           MAX_HDF5_OBJECTS - state["count"])

    try:
        problem = handle.visititems_links(visit)
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: {where}the HDF5 structure cannot be read (truncated or "
                             f"corrupt file?): {_one_line(exc)[:200]}") from exc
    if problem is not None:
        raise problem
    return state["total"]


def _audit_dataset(path: str, where: str, shown: str, dataset: h5py.Dataset) -> List[int]:
    """Refuse external storage, virtual datasets and filters not decoded by :mod:`.chunks`;
    returns the dataset's filter ids in write order."""
    plist = dataset.id.get_create_plist()
    if plist.get_external_count() > 0:
        target = _one_line(_decode(plist.get_external(0)[0]))[:120]
        raise UnsafeModelError(
            f"{path}: {where}dataset {shown} keeps its data in another file ({target!r}, HDF5 "
            "external storage); load_model never reads outside the file it is given. Re-save "
            "the model with model.save().")
    if dataset.is_virtual:
        raise UnsafeModelError(
            f"{path}: {where}dataset {shown} is an HDF5 virtual dataset (its data lives in "
            "other datasets or files); load_model refuses it. Re-save the model with "
            "model.save().")
    return check_filters(path, where, shown, plist)


@contextlib.contextmanager
def _variables_without_values():
    """Keras variables created in this block get a shape and a dtype but no memory and no
    initializer call (Keras' deferred initialisation), so an architecture can be built to
    measure its weights before anything is allocated. They are forgotten on exit."""
    from keras.src.backend.common import global_state  # the list of deferred variables

    key = "uninitialized_variables"
    before = list(global_state.get_global_attribute(key, [], set_to_default=True))
    try:
        with keras.StatelessScope(initialize_variables=False):
            yield
    finally:
        global_state.set_global_attribute(key, before)


def _itemsize(dtype: Any) -> int:
    try:
        return np.dtype(str(dtype)).itemsize
    except TypeError:
        return 8


def _variable_bytes(model: Any) -> int:
    """Bytes the variables of a built ``model`` take (deferred variables included)."""
    return sum(math.prod(int(d) for d in v.shape) * _itemsize(v.dtype)
               for v in getattr(model, "variables", []))


def _check_budget(path: str, needed: int, states: int, budget: int) -> None:
    """The weights (``needed`` bytes) and RNN states an architecture allocates, within budget."""
    if needed + states > budget:
        what = ("the architecture's weights would take" if not states else
                f"the architecture's weights and stateful RNN states ({_mib(states)}) would take")
        raise _too_large(path, what, needed + states, budget)


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------
class _ModelPath(NamedTuple):
    path: str
    kind: str   # "h5" or "zip"
    size: int   # bytes


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _check_path(path: PathLike) -> _ModelPath:
    if isinstance(path, (bytes, bytearray)):
        path = os.fsdecode(bytes(path))
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"load_model expects a file path, got {type(path).__name__}.") from None
    if isinstance(path, bytes):  # an os.PathLike returning bytes
        path = os.fsdecode(path)
    if not path:
        raise ModelFileNotFoundError("load_model got an empty path; give the model file's path.")
    if "\x00" in path:
        raise ModelFileError(f"{path!r}: a file path cannot contain a NUL character.")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ModelFileNotFoundError(f"{path}: is a symbolic link to a missing file "
                                         f"({os.readlink(path)!r}).") from None
        raise ModelFileNotFoundError(f"{path}: no such model file.") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ModelFileError(f"{path}: too many levels of symbolic links (a symlink loop?); "
                                 "point load_model at the model file itself.") from None
        if exc.errno == errno.ENOTDIR:
            raise ModelFileNotFoundError(f"{path}: no such model file (a parent is not a "
                                         "directory).") from None
        raise ModelFileError(f"{path}: cannot be read: {_one_line(exc)}") from None
    except ValueError as exc:  # e.g. a path too long for the platform
        raise ModelFileError(f"{path[:200]}: is not a usable file path: {exc}.") from None
    if stat.S_ISDIR(info.st_mode):
        raise ModelFileError(
            f"{path}: is a directory (a TensorFlow SavedModel?); load_model reads .keras and "
            ".h5 files. Re-save the model with model.save('model.h5') in its original framework.")
    for test, what in _FILE_KINDS:
        if test(info.st_mode):
            raise ModelFileError(f"{path}: is {what}, not a regular file; load_model reads only "
                                 "regular .keras / .h5 files (copy the model to a file first).")
    if not stat.S_ISREG(info.st_mode):
        raise ModelFileError(f"{path}: is not a regular file.")
    try:
        # O_NONBLOCK: a FIFO swapped in after the check above cannot block the open.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ModelFileError(f"{path}: is not a regular file.")
            head = os.read(fd, 8)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot be read: {_one_line(exc)}") from exc
    if head.startswith(_HDF5_MAGIC):
        return _ModelPath(path, "h5", info.st_size)
    if head.startswith(_ZIP_MAGIC):
        return _ModelPath(path, "zip", info.st_size)
    what = "an empty file" if not head else "neither an HDF5 (.h5) nor a .keras (zip) file"
    raise ModelFileError(f"{path}: is {what}; expected a model saved with model.save().")


def _is_keras2(version: Optional[str]) -> bool:
    return not (version or "").strip().startswith("3")


def _read_model_config(path: str, handle: h5py.File) -> Tuple[Any, Optional[str]]:
    try:
        raw = handle.attrs.get("model_config")
        version = handle.attrs.get("keras_version")
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise ModelFileError(f"{path}: HDF5 attributes cannot be read (corrupt file?): "
                             f"{_one_line(exc)[:200]}") from exc
    if raw is None:
        hint = (" It holds weights only (model.save_weights): build the model in code and "
                "call model.load_weights()." if ("layer_names" in handle.attrs or "layers" in handle
                                                 or "vars" in handle) else
                " It is not a Keras model file.")
        raise ModelFileError(f"{path}: has no 'model_config' attribute.{hint}")
    try:
        version = None if version is None else _decode(version)
    except UnicodeDecodeError:
        version = None
    return _parse_json(path, raw, "model_config"), version


def _measure_plan(translator: _Translator, config: Any, weights: Mapping[str, Any],
                  budget: int, shapes: Optional[Mapping[str, Any]] = None) -> Tuple[_Plan, int]:
    """Build the architecture with shape-only variables (nothing allocated, no initializer run).

    Returns:
        the plan (its layers know their weights' shapes, stateful RNNs built without their
        state) and the bytes the real model's weights would take; raises
        :class:`ModelTooLargeError` when they and the states of stateful RNNs exceed ``budget``.
    """
    without_states = stateless(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the real build warns once
        with _variables_without_values():
            plan = _plan_checked(translator, without_states.config)
            if shapes is not None:
                _check_missing(translator.path, plan, shapes)
            needed = _variable_bytes(_build(translator, plan, weights))
            states = state_bytes(plan.layers.values(), without_states.stateful)
    _check_budget(translator.path, needed, states, budget)
    return plan, needed


def _load_h5(path: str, custom_objects: Dict[str, Any], safe_mode: bool,
             budget: int) -> keras.Model:
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise ModelFileError(f"{path}: is not a readable HDF5 file (truncated or corrupt?): "
                             f"{_one_line(exc)[:200]}") from exc
    with handle:
        _audit_hdf5(path, handle, budget)
        config, version = _read_model_config(path, handle)
        translator = _Translator(path, _is_keras2(version), custom_objects, safe_mode)
        group = handle["model_weights"] if "model_weights" in handle else handle
        datasets = _h5_weight_datasets(path, group)
        shapes = {name: [d.shape for d in found] for name, found in datasets.items()}
        dry, _ = _measure_plan(translator, config, datasets, budget, shapes)
        datasets = _order_by_sublayer(dry.layers, datasets)
        slots = cudnn_slots(dry.layers, dry.graph["cudnn"])
        shapes = to_canonical(path, slots, {name: [d.shape for d in found]
                                            for name, found in datasets.items()},
                              canonical_shapes)
        # Stored shapes are checked against the architecture before any weight is read.
        _check_weight_shapes(path, dry.layers, shapes)
        del dry
        plan = _plan_checked(translator, config)
        weights = to_canonical(path, slots, _read_h5_weights(path, datasets),
                               canonical_weights)
    model = _build(translator, plan, weights)
    _assign_weights(path, plan.layers, weights)
    return model


def _check_missing(path: str, plan: _Plan, shapes: Mapping[str, Any]) -> None:
    missing = sorted(n for n, layer in plan.layers.items() if n not in shapes and
                     _may_have_weights(layer))
    if missing:
        raise ModelFileError(f"{path}: the file holds no weights for layer(s) "
                             f"{', '.join(missing)[:200]} (saved before the model was built?).")


def _may_have_weights(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, (keras.layers.Dense, keras.layers.Embedding, keras.layers.RNN,
                              keras.layers.Bidirectional, keras.layers.Conv1D,
                              keras.layers.TimeDistributed))


# --- .keras archives --------------------------------------------------------------------------
_INTERNAL_MARKERS = {"__keras_tensor__", "__tuple__", "__numpy__", "__tensor__", "__bytes__",
                     "__typespec__", "__slice__", "__ellipsis__", "__tensorshape__"}


def _screen_keras_config(path: str, config: Any, custom_objects: Mapping[str, Any],
                         safe_mode: bool) -> None:
    """Refuse Lambda layers and non-Keras classes in a ``.keras`` architecture before loading."""

    def known(obj: Mapping[str, Any]) -> bool:
        cls, module = obj.get("class_name"), obj.get("module")
        registered = obj.get("registered_name")
        if cls in custom_objects or (registered and registered in custom_objects):
            return True
        if cls == "function":
            fn_name = str(obj.get("config"))
            short = fn_name.split(">")[-1]
            return (fn_name in custom_objects or short in custom_objects
                    or keras.saving.get_registered_object(fn_name) is not None
                    or (module in (None, "builtins") and _Translator._keras3_activation(fn_name))
                    or (isinstance(module, str) and module.startswith("keras.")))
        if isinstance(module, str) and (module == "keras" or module.startswith("keras.")):
            return True
        if registered and "keras_lrp>" in registered:
            return keras.saving.get_registered_object(registered) is not None
        return bool(registered) and keras.saving.get_registered_object(registered) is not None

    def walk(obj: Any, layer: str) -> None:
        if isinstance(obj, list):
            for item in obj:
                walk(item, layer)
            return
        if not isinstance(obj, dict):
            return
        cls = obj.get("class_name")
        if isinstance(cls, str) and "config" in obj:
            cfg = obj.get("config")
            if isinstance(cfg, dict) and isinstance(cfg.get("name"), str):
                layer = cfg["name"]
            if cls in ("Lambda", "__lambda__") and safe_mode:
                raise UnsafeModelError(
                    f"{path}: layer {layer!r} is a Lambda layer, i.e. Python code stored in the "
                    "file; it is refused in safe mode. If you trust this file, call "
                    "load_model(..., safe_mode=False).")
            if cls == "function" and not known(obj):
                fn_name = str(obj.get("config")).split(">")[-1]
                raise UnsafeModelError(
                    f"{path}: layer {layer!r} uses function {obj.get('config')!r}, which is not "
                    "built into Keras; if you trust this file, pass "
                    f"custom_objects={{{fn_name!r}: function}}.")
            if cls not in _INTERNAL_MARKERS and cls != "__lambda__" and not known(obj):
                what = obj.get("registered_name") or cls
                raise UnsafeModelError(
                    f"{path}: layer {layer!r} uses class {what!r} (module "
                    f"{obj.get('module')!r}), which is not built into Keras; if you trust this "
                    f"file, pass custom_objects={{{cls!r}: YourClass}}.")
        for key, value in obj.items():
            if key not in ("compile_config", "build_config"):
                walk(value, layer)

    walk(config, "?")


class _Archive(NamedTuple):
    """What a ``.keras`` zip holds, read within the limits."""

    config: Any
    version: Optional[str]
    weight_bytes: int   # declared size of the datasets in model.weights.h5


def _read_keras_zip(path: str, budget: int) -> _Archive:
    """Check the members' declared sizes (and so the compression ratio) before reading any,
    parse the JSON members with the size / depth limits, and audit ``model.weights.h5`` like an
    ``.h5`` file (the copy Keras later opens is the same member)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > MAX_HDF5_OBJECTS:
                raise ModelTooLargeError(f"{path}: the archive has {len(members):,} members "
                                         f"(limit {MAX_HDF5_OBJECTS:,}); a .keras file has 3.")
            unpacked = sum(m.file_size for m in members)
            if unpacked > budget:
                packed = sum(m.compress_size for m in members)
                raise _too_large(path, f"unpacks (compression ratio {unpacked / max(packed, 1):,.0f}"
                                       ":1) to", unpacked, budget)
            names = {m.filename: m for m in members}
            if "config.json" not in names or "model.weights.h5" not in names:
                raise KeyError("config.json" if "config.json" not in names else "model.weights.h5")
            for name in ("config.json", "metadata.json"):
                if name in names and names[name].file_size > MAX_CONFIG_BYTES:
                    raise _config_too_large(path, name, names[name].file_size)
            config = _parse_json(path, archive.read("config.json"), "config.json")
            metadata = (_parse_json(path, archive.read("metadata.json"), "metadata.json")
                        if "metadata.json" in names else {})
            weights_h5 = archive.read("model.weights.h5")
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, ValueError, OSError, EOFError,
            NotImplementedError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: is not a valid .keras archive (truncated, or missing "
                             f"config.json / model.weights.h5): {_one_line(exc)[:200]}") from exc
    where = "model.weights.h5: "
    try:
        handle = h5py.File(io.BytesIO(weights_h5), "r")
    except OSError as exc:
        raise ModelFileError(f"{path}: {where}is not a readable HDF5 file: "
                             f"{_one_line(exc)[:200]}") from exc
    with handle:
        weight_bytes = _audit_hdf5(path, handle, budget, where)
    version = metadata.get("keras_version") if isinstance(metadata, dict) else None
    return _Archive(config, version if isinstance(version, str) else None, weight_bytes)


# Variables a Keras 3 model holds besides its saved weights (seed generator states): slack when
# the architecture's variables are compared with the weights the archive stores.
_UNSAVED_VARIABLE_SLACK = 2**20


def _check_needed_bytes(path: str, needed: int, stored: int) -> None:
    if needed > stored + _UNSAVED_VARIABLE_SLACK:
        raise ModelFileError(
            f"{path}: the architecture's weights take {_mib(needed)} but model.weights.h5 "
            f"stores only {_mib(stored)}; the file is not a consistent Keras model.")


class _Measured(NamedTuple):
    """A ``config.json`` built with shape-only variables."""

    needed: int   # bytes its variables take
    # per top-level layer, the (path, shape) of each weight, as the layer graph implies them;
    # None when the layers were built from their build_config instead
    implied: Optional[Dict[str, List[Tuple[str, Tuple[int, ...]]]]]


def _graph_built_config(config: Any) -> Optional[Any]:
    """``config`` without its top-level layers' ``build_config``, so that deserialising it builds
    each layer on the tensors the layer graph feeds it (Keras builds a layer from its
    ``build_config`` instead, which a file may contradict: an ``InputLayer`` of 5 features
    feeding an LSTM stored with a (3, 16) kernel). None for a model whose layers only a
    ``build_config`` would build (a Sequential without an ``InputLayer``)."""
    body = config.get("config") if isinstance(config, dict) else None
    layers = body.get("layers") if isinstance(body, dict) else None
    if not isinstance(layers, list) or config.get("class_name") not in ("Functional", "Model",
                                                                          "Sequential"):
        return None
    if config["class_name"] == "Sequential" and not (
            layers and isinstance(layers[0], dict) and layers[0].get("class_name") == "InputLayer"):
        return None
    stripped = [{k: v for k, v in entry.items() if k != "build_config"}
                if isinstance(entry, dict) else entry for entry in layers]
    return {**config, "config": {**body, "layers": stripped}}


def _measure_keras3_config(path: str, config: Any, scope: Mapping[str, Any], safe_mode: bool,
                           budget: int) -> _Measured:
    """Bytes of variables a Keras 3 ``config.json`` builds, and the weight shapes its layer graph
    implies, measured without allocating any variable."""
    if isinstance(config, dict):
        config = {k: v for k, v in config.items() if k != "compile_config"}
    without_states = stateless(config)
    config = without_states.config
    graph_config = _graph_built_config(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _variables_without_values():
            model, implied = None, None
            if graph_config is not None:
                with contextlib.suppress(Exception):   # then as Keras would build it, below
                    model = keras.saving.deserialize_keras_object(
                        graph_config, custom_objects=dict(scope), safe_mode=safe_mode)
                    implied = {layer.name: [(v.path, tuple(v.shape)) for v in layer.weights]
                               for layer in model.layers}
            if model is None:
                model = keras.saving.deserialize_keras_object(config, custom_objects=dict(scope),
                                                              safe_mode=safe_mode)
            needed = _variable_bytes(model)
            states = state_bytes(model.layers, without_states.stateful)
    _check_budget(path, needed, states, budget)
    return _Measured(needed, implied)


def _check_implied_shapes(path: str, measured: _Measured, model: keras.Model) -> None:
    """The weights Keras loaded (built from each layer's ``build_config``, so of the stored
    shapes) against the shapes the architecture's layer graph implies."""
    for layer in model.layers:
        implied = (measured.implied or {}).get(layer.name)
        if not implied or len(implied) != len(layer.weights):
            continue
        for (weight, want), var in zip(implied, layer.weights):
            if want != tuple(var.shape):
                raise ModelFileError(
                    f"{path}: layer {layer.name!r} ({type(layer).__name__}): the architecture in "
                    f"config.json feeds it inputs that need weight {weight!r} of shape {want}, "
                    f"but the file stores shape {tuple(var.shape)}; the config contradicts the "
                    "weights (e.g. an Input of another feature size).")


def _load_keras_zip(path: str, custom_objects: Dict[str, Any], safe_mode: bool,
                    budget: int) -> keras.Model:
    config, version, stored = _read_keras_zip(path, budget)
    if not _is_keras2(version):
        _screen_keras_config(path, config, custom_objects, safe_mode)
    # (a .keras written by tf.keras 2.x is rebuilt by the translator, which only constructs
    # whitelisted classes, like for .h5 files)
    scope = {"LRP_LSTMCell": LRP_LSTMCell, "keras2_hard_sigmoid": keras2_hard_sigmoid,
             **custom_objects}
    first_error: Optional[BaseException] = None
    if not _is_keras2(version):
        try:
            measured = _measure_keras3_config(path, config, scope, safe_mode, budget)
        except ModelFileError:
            raise
        except Exception as exc:  # Keras cannot build it: rebuild it ourselves (below)
            first_error = exc
        else:
            _check_needed_bytes(path, measured.needed, stored)
            try:
                model = keras.saving.load_model(path, custom_objects=scope, compile=False,
                                                safe_mode=safe_mode)
            except Exception as exc:  # fall back to rebuilding the architecture ourselves
                first_error = exc
            else:
                _check_implied_shapes(path, measured, model)
                return model
    translator = _Translator(path, _is_keras2(version), custom_objects, safe_mode)
    try:
        _, needed = _measure_plan(translator, config, {}, budget)
        _check_needed_bytes(path, needed, stored)
        model = _build(translator, _plan_checked(translator, config), {})
    except (UnsafeModelError, UnsupportedModelError, ModelTooLargeError):
        raise
    except ModelFileError as exc:
        if first_error is None:
            raise
        raise UnsupportedModelError(
            f"{path}: Keras 3 could not load this .keras file ({_one_line(first_error)[:200]}) "
            f"and it could not be rebuilt either ({_one_line(exc)[:200]}).") from exc
    try:
        model.load_weights(path)
    except Exception as exc:
        reason = f"; Keras 3 load_model said: {_one_line(first_error)[:150]}" if first_error else ""
        raise ModelFileError(f"{path}: the weights of this Keras {version or '?'} .keras file "
                             f"could not be loaded: {_one_line(exc)[:200]}{reason}") from exc
    return model


def load_model(path: PathLike, custom_objects: Optional[Mapping[str, Any]] = None,
               safe_mode: bool = True, *, max_bytes: Optional[int] = None) -> keras.Model:
    """Load a ``.keras`` or ``.h5`` model file as a Keras 3 model with the same predictions.

    Reads files written by Keras 3 (``.keras`` and ``.h5``), Keras 2.x (``.h5``) and tf.keras
    2.x / tf_keras (``.h5``; ``.keras`` where the layers are supported). The file type is
    recognised from its content. The model is returned uncompiled (no optimizer or loss).

    Model files are treated as untrusted data. Before any weight is read or any layer is
    allocated, load_model checks (and refuses with a :class:`ModelFileError` subclass naming the
    file):

    * the path is a regular file (not a FIFO, device, socket, directory or symlink loop);
    * the file never points outside itself: HDF5 external storage, external links, soft links,
      virtual datasets and filters needing plugins are refused (:class:`UnsafeModelError`),
      also inside a ``.keras`` archive's ``model.weights.h5``; so are szip, n-bit,
      scale-offset and lzf, whose decoders size their output from the file;
    * chunked datasets, before HDF5 decodes any (:class:`ModelTooLargeError`): a chunk shape
      may not exceed the dataset's in any dimension, the stored chunks may not outnumber the
      shape's nor lie beyond the file, a stored chunk may take at most its uncompressed size
      + 0.1% + 64 bytes, and each deflate (gzip) stream is inflated here, stopped one byte past
      its chunk's size (HDF5's own inflate grows its buffer until the stream ends);
    * sizes (:class:`ModelTooLargeError`): the datasets the file declares, the unpacked size of
      a ``.keras`` archive's members and the weights the architecture would allocate (measured
      by building it with shape-only variables) may not exceed ``max_bytes``, by default
      ``16 * file size + 16 MiB`` (:data:`WEIGHT_BYTES_PER_FILE_BYTE`,
      :data:`WEIGHT_BYTES_FLOOR`); an architecture may take :data:`MAX_CONFIG_BYTES` (16 MiB),
      nest :data:`MAX_CONFIG_DEPTH` (100) levels and list :data:`MAX_LAYERS` (5,000) layers;
      an HDF5 file may hold
      :data:`MAX_HDF5_OBJECTS` (100,000) links and stored chunks. The module constants can be
      raised for trusted files;
    * every stored weight's shape matches what the architecture implies
      (:class:`ModelFileError`): for a ``.keras``, the shapes its layer graph implies, not only
      each layer's ``build_config``;
    * tf.keras op layers: integer indices, slice bounds, axes and shapes fit int64, slice steps
      are not 0, constants are finite (:class:`UnsupportedModelError`).

    A model whose weights hold NaN or inf is returned with a ``RuntimeWarning`` naming each such
    layer and its counts (its predictions and explanations will not be finite).

    Args:
        path: the model file (``str``, ``bytes`` or ``os.PathLike``).
        custom_objects: ``{"ClassName": cls_or_function}`` for custom layers, cells or
            activations you trust. For ``.h5`` files a class is built with
            ``cls.from_config(config)`` (``batch_input_shape`` removed from the config).
        safe_mode: refuse ``Lambda`` layers (Python code stored in the file). Set False only
            for files you trust; the code must come from the same Python version.
        max_bytes: the most bytes of weights (and of unpacked archive members) the file may
            declare; None for the default above. Raise it for a trusted, compressed file.

    Returns:
        a ``keras.Model`` (``Sequential`` or functional) with the file's weights. Layer names
        are those of the file.

    Raises:
        TypeError: ``path`` is not a path, or ``custom_objects`` / ``max_bytes`` has the wrong
            type.
        ModelFileNotFoundError: the file does not exist (also a ``FileNotFoundError``).
        ModelFileError: not a regular file, not a Keras model file, or truncated / corrupt, or
            an ``.h5`` without ``model_config`` (e.g. written by ``save_weights``), or weights
            that do not fit the architecture. The base class of the three below.
        UnsafeModelError: a ``Lambda`` layer in safe mode, a class / activation that is not
            built into Keras and not in ``custom_objects``, or data outside the file.
        UnsupportedModelError: something that cannot be rebuilt faithfully in Keras 3.
        ModelTooLargeError: the file declares more than the limits above, or holds a chunk
            that would unpack to more than its dataset declares.
    """
    if custom_objects is not None and not isinstance(custom_objects, Mapping):
        raise TypeError("custom_objects must be a dict {name: class_or_function}, got "
                        f"{type(custom_objects).__name__}.")
    if max_bytes is not None:
        if isinstance(max_bytes, (bool, np.bool_)) or not isinstance(max_bytes, (int, np.integer)):
            raise TypeError(f"max_bytes must be None or an int, got {max_bytes!r}.")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes!r}.")
        max_bytes = int(max_bytes)
    custom_objects = dict(custom_objects or {})
    model_path = _check_path(path)
    path = model_path.path
    budget = _weight_budget(model_path.size, max_bytes)
    try:
        if model_path.kind == "zip":
            model = _load_keras_zip(path, custom_objects, bool(safe_mode), budget)
        else:
            model = _load_h5(path, custom_objects, bool(safe_mode), budget)
        found = non_finite_weights(model)
    except ModelFileError:
        raise
    except RecursionError:
        raise ModelFileError(f"{path}: the model is nested too deeply to be rebuilt.") from None
    except MemoryError:
        raise ModelTooLargeError(f"{path}: ran out of memory while loading; the file declares "
                                 "more data than this machine holds.") from None
    except Exception as exc:  # any other failure on untrusted data: one documented type
        raise ModelFileError(f"{path}: could not be loaded ({type(exc).__name__}: "
                             f"{_one_line(exc)[:200]}).") from exc
    if found:
        warnings.warn(f"{path}: the weights are not all finite: {describe_non_finite(found)}; "
                      "every prediction and explanation through these layers will be NaN or inf "
                      "(training diverged, or the file is damaged).", RuntimeWarning, stacklevel=2)
    return model
