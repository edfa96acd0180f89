"""Chunked HDF5 datasets checked before HDF5 decodes any of them.

HDF5 unpacks a chunk into a buffer of the chunk's size, and its deflate filter keeps doubling that
buffer until the stored stream ends. So the declared shape of a dataset bounds nothing by itself:
a Dense bias declared (2,) but stored in one 1 GiB chunk of zeros (1 MB deflated) peaks at 1 GB
when read, and so does a 4 KB chunk whose stored stream inflates to 256 MB. Before anything is
read, every chunked dataset is checked against what it declares:

* its chunk shape exceeds its shape in no dimension (a chunk need not be larger than its data);
* it stores at most as many chunks as its shape has, each inside the file and no larger than its
  chunk could compress to (``capacity + 0.1% + 64`` bytes: deflate's worst-case overhead);
* each filtered chunk is inflated here by :mod:`zlib` into at most its capacity (plus one byte,
  to see a stream that goes on), so no stream HDF5 later decodes unpacks to more than its chunk.

Only the filters decoded here are accepted (deflate, shuffle, fletcher32); szip, n-bit,
scale-offset and lzf size their output from numbers stored in the file and are refused, like
filters that need plugins. Keras writes neither chunks nor filters: its files pass with no
decoding at all.
"""
from __future__ import annotations

import math
import zlib
from typing import Any, List, NamedTuple, Tuple

import h5py
import numpy as np

from .errors import ModelFileError, ModelTooLargeError, UnsafeModelError
from .translate import _one_line

_DEFLATE, _SHUFFLE, _FLETCHER32 = 1, 2, 3
#: Filters this module decodes (HDF5 filter ids), so that their output size is known before HDF5's.
DECODED_FILTERS = {_DEFLATE: "deflate (gzip)", _SHUFFLE: "shuffle", _FLETCHER32: "fletcher32"}
# Filters built into HDF5 / h5py that need no plugin but whose decoders size their output from
# numbers stored in the file.
_UNCHECKED_FILTERS = {4: "szip", 5: "n-bit", 6: "scale-offset", 32000: "lzf"}


class _Chunk(NamedTuple):
    """One stored chunk (from the dataset's chunk index)."""

    offset: Tuple[int, ...]   # element offset of the chunk in the dataset
    filter_mask: int          # bit i set: filter i was skipped for this chunk
    byte_offset: int          # where the stored bytes start in the file
    size: int                 # stored bytes


def check_filters(path: str, where: str, shown: str, plist: Any) -> List[int]:
    """The dataset's filter ids in write order; refuses any filter not decoded here."""
    codes = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    for code in codes:
        if code in _UNCHECKED_FILTERS:
            raise UnsafeModelError(
                f"{path}: {where}dataset {shown} is compressed with HDF5's {_UNCHECKED_FILTERS[code]} "
                "filter, whose decoder sizes its output from numbers stored in the file; load_model "
                f"only reads uncompressed data or {', '.join(DECODED_FILTERS.values())}. Re-save "
                "the model with model.save().")
        if code not in DECODED_FILTERS:
            raise UnsafeModelError(
                f"{path}: {where}dataset {shown} uses HDF5 filter #{code}, which would need a "
                "plugin library; load_model only decodes the standard filters.")
    return codes


def stored_bound(capacity: int) -> int:
    """The most bytes a chunk of ``capacity`` bytes may take in the file: zlib's worst case
    (``n + n/4096 + n/16384 + 13``) plus fletcher32's 4 bytes, rounded up."""
    return capacity + capacity // 1000 + 64


def audit_chunks(path: str, where: str, shown: str, dataset: h5py.Dataset,
                 filters: List[int], file_size: int, max_chunks: int) -> int:
    """Refuse a chunked ``dataset`` whose chunks could unpack to more than it declares.

    Args:
        filters: the dataset's filter ids in write order (:func:`check_filters`).
        file_size: bytes of the HDF5 file (stored chunks must lie inside it).
        max_chunks: the most stored chunks to walk (each costs time and a little memory).

    Returns:
        the number of stored chunks (0 for a contiguous or compact dataset).

    Raises:
        ModelTooLargeError: a chunk shape larger than the dataset, more stored chunks than the
            shape has, a stored chunk larger than its chunk can compress to, or a stored stream
            inflating to more than its chunk holds.
        ModelFileError: a chunk outside the file, or a stream that is not valid deflate data.
    """
    shape, chunk = dataset.shape, dataset.chunks
    if chunk is None or shape is None:
        return 0
    name = f"{path}: {where}dataset {shown}"
    if len(chunk) != len(shape) or any(c > max(int(s), 1) for c, s in zip(chunk, shape)):
        raise ModelTooLargeError(
            f"{name} declares shape {tuple(shape)} but chunks of shape {tuple(chunk)}; HDF5 "
            "would unpack each whole chunk, far more than the data declared (a decompression "
            "bomb). Re-save the model with model.save().")
    itemsize = dataset.dtype.itemsize
    capacity = math.prod(chunk) * itemsize
    grid = math.prod(-(-int(s) // c) for s, c in zip(shape, chunk))
    count = dataset.id.get_num_chunks()
    if count > grid:
        raise ModelTooLargeError(f"{name} stores {count:,} chunks but its shape {tuple(shape)} "
                                 f"has room for {grid:,}; the file is crafted or corrupt.")
    if count > max_chunks:
        raise ModelTooLargeError(
            f"{path}: {where}holds more than {max_chunks:,} HDF5 objects and chunks "
            "(keras_lrp.io.MAX_HDF5_OBJECTS); Keras stores weights unchunked.")
    chunks = _stored_chunks(dataset, count)
    for stored in chunks:
        if stored.size > stored_bound(capacity):
            raise ModelTooLargeError(
                f"{name} stores a chunk of {stored.size:,} bytes where its chunk shape "
                f"{tuple(chunk)} holds {capacity:,} bytes uncompressed (a decompression bomb).")
        if stored.byte_offset + stored.size > file_size:
            raise ModelFileError(f"{name} has a chunk beyond the end of the file (truncated or "
                                 "corrupt file?).")
    if _DEFLATE in filters:   # the only decoder here whose output can exceed its input
        for stored in chunks:
            _check_inflated_size(name, dataset, stored, filters, capacity, itemsize)
    return count


def _stored_chunks(dataset: h5py.Dataset, count: int) -> List[_Chunk]:
    """The chunk index: offset, filter mask and stored size of each chunk (read, not decoded)."""
    found: List[_Chunk] = []

    def add(info: Any) -> None:
        found.append(_Chunk(tuple(info.chunk_offset), int(info.filter_mask),
                            int(info.byte_offset), int(info.size)))

    if hasattr(dataset.id, "chunk_iter"):    # HDF5 >= 1.14: one walk of the index
        dataset.id.chunk_iter(add)
    else:                                    # (get_chunk_info walks the index once per call)
        for i in range(count):
            add(dataset.id.get_chunk_info(i))
    return found


def _check_inflated_size(name: str, dataset: h5py.Dataset, stored: _Chunk, filters: List[int],
                         capacity: int, itemsize: int) -> None:
    """Undo ``filters`` on one stored chunk as HDF5 would (last filter first), every inflate
    stopped one byte past the chunk's capacity."""
    try:
        mask, data = dataset.id.read_direct_chunk(stored.offset)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelFileError(f"{name}: its chunk at {stored.offset} cannot be read (truncated "
                             f"or corrupt file?): {_one_line(exc)[:200]}") from exc
    for index in reversed(range(len(filters))):
        if mask & (1 << index):
            continue
        if filters[index] == _FLETCHER32:
            data = data[:-4]
        elif filters[index] == _SHUFFLE:
            data = _unshuffle(data, itemsize)
        else:
            try:
                data = zlib.decompressobj().decompress(data, capacity + 1)
            except zlib.error as exc:
                raise ModelFileError(f"{name}: its chunk at {stored.offset} is not valid "
                                     f"deflate data ({exc}); the file is corrupt.") from None
            if len(data) > capacity:
                raise ModelTooLargeError(
                    f"{name}: its chunk at {stored.offset} ({stored.size:,} bytes stored) "
                    f"inflates to more than the {capacity:,} bytes its chunk shape "
                    f"{tuple(dataset.chunks)} holds (a decompression bomb).")


def _unshuffle(data: bytes, itemsize: int) -> bytes:
    """HDF5's shuffle filter undone: byte planes back to items (a trailing remainder is kept)."""
    whole = len(data) // itemsize * itemsize
    if itemsize <= 1 or whole == 0:
        return data
    planes = np.frombuffer(data, np.uint8, count=whole).reshape(itemsize, whole // itemsize)
    return planes.T.tobytes() + data[whole:]
