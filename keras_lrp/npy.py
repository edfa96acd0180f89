"""``.npy`` files a user gives (numeric inputs, embedding matrices), read safely.

``np.load`` allocates what the header declares before reading a byte of data: a 128-byte file
declaring 10**12 rows fails with "Unable to allocate 10.9 TiB" (or, memory-mapped, with an mmap
error). :func:`load_npy` reads the header first (``numpy.lib.format``), checks that the file holds
the bytes it declares and that the dtype holds no Python objects, then loads with
``allow_pickle=False``. Needs only NumPy (the CLI reads inputs before importing TensorFlow).
"""
from __future__ import annotations

import math
import os
from typing import NamedTuple, Optional, Tuple, Union

import numpy as np

__all__ = ["NpyFileError", "NpyHeader", "load_npy", "read_npy_header"]

PathLike = Union[str, "os.PathLike[str]"]


class NpyFileError(ValueError):
    """A ``.npy`` file is malformed, holds Python objects, or declares more data than it holds."""


class NpyHeader(NamedTuple):
    """What a ``.npy`` header declares."""

    shape: Tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_bytes: int    # prod(shape) * itemsize
    file_bytes: int    # bytes after the header


def _size(nbytes: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.1f} {unit}"
    return f"{nbytes} bytes"


def read_npy_header(path: PathLike, name: Optional[str] = None) -> NpyHeader:
    """Read and check the header of the ``.npy`` file ``path``; nothing else is read.

    Args:
        name: how messages name the file (default: the path), e.g. ``"--npy x.npy"``.

    Raises:
        NpyFileError: not a ``.npy`` file, an object dtype, or more data declared than the file
            holds (each message names the file).
        OSError: the file cannot be opened.
    """
    label = name or os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"format version {version[0]}.{version[1]} is not read here "
                                 "(save the array with np.save)")
        except (ValueError, EOFError, SyntaxError, TypeError) as err:
            raise NpyFileError(f"{label}: not a valid .npy file ({err}).") from None
        offset = f.tell()
    if dtype.hasobject:
        raise NpyFileError(f"{label}: holds Python objects ({dtype}), which would need pickle; "
                           "save a numeric array.")
    if any(d < 0 for d in shape):
        raise NpyFileError(f"{label}: declares the negative shape {shape}.")
    declared = math.prod(shape) * dtype.itemsize
    if declared > size - offset:
        raise NpyFileError(
            f"{label}: declares {dtype} {shape} ({_size(declared)}) but holds only "
            f"{_size(size - offset)} of data (a truncated or crafted file).")
    return NpyHeader(tuple(shape), dtype, bool(fortran_order), declared, size - offset)


def load_npy(path: PathLike, mmap_mode: Optional[str] = None,
             name: Optional[str] = None) -> np.ndarray:
    """``np.load(path, mmap_mode=mmap_mode, allow_pickle=False)`` after
    :func:`read_npy_header` has checked the file, so nothing larger than the file is allocated.

    Raises:
        NpyFileError: see :func:`read_npy_header`.
        OSError: the file cannot be read.
    """
    read_npy_header(path, name)
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except ValueError as err:   # e.g. the file changed since its header was checked
        raise NpyFileError(f"{name or os.fspath(path)}: cannot be read ({err}).") from None
