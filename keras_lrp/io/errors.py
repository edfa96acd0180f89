"""The errors :func:`keras_lrp.io.load_model` raises: all one line, naming the file, all
subclasses of :class:`ModelFileError` (a ``ValueError``)."""
from __future__ import annotations

class ModelFileError(ValueError):
    """The file is missing, unreadable, or is not a Keras model file.

    The base class of every error :func:`load_model` raises for a bad file."""


class ModelFileNotFoundError(ModelFileError, FileNotFoundError):
    """The model file does not exist."""


class UnsafeModelError(ModelFileError):
    """The model holds code (``Lambda``) or custom classes, which are only loaded on request, or
    the file refers to data outside itself (HDF5 external storage, external / soft links,
    virtual datasets, unknown compression filters), which is never read, or uses a compression
    filter whose decoder sizes its output from the file (szip, n-bit, scale-offset, lzf)."""


class UnsupportedModelError(ModelFileError):
    """The model uses something that cannot be rebuilt faithfully in Keras 3."""


class ModelTooLargeError(ModelFileError):
    """The file declares more data than :func:`load_model`'s limits allow (``max_bytes=``), or
    holds a compressed HDF5 chunk that would unpack to more than its dataset declares (a
    decompression bomb; no opt-in)."""
