"""The files of :func:`keras_lrp.distributed.explain_corpus`: binary shards, and the merged output.

A worker keeps a shard's explanations as one Arrow table (an Arrow IPC file, ``shard-00012.arrow``),
one row per sequence, in input order::

    index int64 | target int64 | score f | scores fixed_size_list<f>[outputs] |
    relevance large_list<f> (per timestep) or large_list<fixed_size_list<f>[features]> | rest f
    [| timestep int64]

``f`` is the explainer's dtype (float32 or float64): the numbers are stored as computed, nothing is
formatted in the worker. The driver turns the tables into the output once, at the merge:
``out.jsonl`` (one JSON line per sequence; floats with Python's shortest round-trip ``repr``, so a
parsed line holds exactly the numbers :func:`keras_lrp.explain` returns) or ``out.parquet`` (the
tables themselves, one row group per shard; for corpora whose JSON the driver would take long to
write). Both read back with :func:`read_corpus_output`.

pyarrow comes with Ray Data (``pip install "keras-lrp[distributed]"``).
"""
from __future__ import annotations

import json
import os
from typing import IO, Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Union

import numpy as np

__all__ = ["OUTPUTS", "ExplainedGroup", "shard_table", "table_bytes", "read_table", "read_corpus_output",
           "OutputWriter"]

PathLike = Union[str, "os.PathLike[str]"]
#: output formats of the merge -> file name
OUTPUTS = {"jsonl": "out.jsonl", "parquet": "out.parquet"}


class ExplainedGroup(NamedTuple):
    """Sequences of one length explained in one :meth:`keras_lrp.Explainer.attribute` call.

    Attributes:
        positions: (g,) their positions in the shard.
        explanation: the :class:`keras_lrp.Explanation` of the g sequences.
    """

    positions: np.ndarray
    explanation: Any


def shard_table(start: int, n: int, groups: List[ExplainedGroup], feature_relevance: bool):
    """The Arrow table of a shard's ``n`` sequences (corpus rows ``start..start+n-1``) from their
    explained groups, rows in input order. ``feature_relevance``: the full (time, features)
    relevance, else the per-timestep sums (:attr:`keras_lrp.Explanation.word_relevance`)."""
    import pyarrow as pa

    first = groups[0].explanation
    n_outputs = first.scores.shape[1]
    target = np.empty(n, np.int64)
    score = np.empty(n, first.scores.dtype)
    scores = np.empty((n, n_outputs), first.scores.dtype)
    rest = np.empty(n, first.rest.dtype)
    timestep = None if first.timestep is None else np.empty(n, np.int64)
    lengths = np.empty(n, np.int64)
    relevances = []
    for positions, e in groups:
        target[positions] = e.target
        score[positions] = e.explained_score
        scores[positions] = e.scores
        rest[positions] = e.rest
        if timestep is not None:
            timestep[positions] = e.timestep
        relevance = e.relevance if feature_relevance else e.word_relevance    # (g, time[, features])
        lengths[positions] = relevance.shape[1]
        relevances.append(relevance)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    inner = relevances[0].shape[2:]
    if len(groups) == 1 and np.array_equal(groups[0].positions, np.arange(n)):
        values = relevances[0].reshape((-1,) + inner)          # one length, in order: no copy
    else:
        values = np.empty((int(offsets[-1]),) + inner, relevances[0].dtype)
        for (positions, _), relevance in zip(groups, relevances):
            rows = offsets[positions][:, None] + np.arange(relevance.shape[1])
            values[rows.reshape(-1)] = relevance.reshape((-1,) + inner)
    items = pa.array(values.reshape(-1))
    for size in reversed(inner):                                # (features,) -> fixed-size lists
        items = pa.FixedSizeListArray.from_arrays(items, int(size))
    columns = {"index": pa.array(np.arange(start, start + n, dtype=np.int64)), "target": pa.array(target),
               "score": pa.array(score),
               "scores": pa.FixedSizeListArray.from_arrays(pa.array(scores.reshape(-1)), n_outputs),
               "relevance": pa.LargeListArray.from_arrays(pa.array(offsets), items), "rest": pa.array(rest)}
    if timestep is not None:
        columns["timestep"] = pa.array(timestep)
    return pa.table(columns)


def table_bytes(table) -> bytes:
    """``table`` as the bytes of an Arrow IPC file."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def read_table(data: bytes):
    """The table of an Arrow IPC file's bytes (:func:`table_bytes`)."""
    import pyarrow as pa

    return pa.ipc.open_file(pa.BufferReader(data)).read_all()


#: rows turned into Python objects at a time: a shard of long sequences (4,096 x 10,000 timesteps x
#: features) would otherwise become one list of Python floats many times the size of its numbers
RECORD_ROWS = 256


def _records(table) -> Iterator[Dict[str, Any]]:
    """One dict per row, keys in column order, Python ints / floats / lists (float32 values exact),
    converted :data:`RECORD_ROWS` rows at a time."""
    for batch in table.to_batches(max_chunksize=RECORD_ROWS):
        yield from _batch_records(batch)


def _batch_records(batch) -> Iterator[Dict[str, Any]]:
    """One dict per row of an Arrow record batch (see :func:`_records`)."""
    names = batch.schema.names
    for row in zip(*(column.to_pylist() for column in batch.columns)):
        yield dict(zip(names, row))


class OutputWriter:
    """Writes the merged output to an open binary file, one shard table at a time, in input order.

    Args:
        file: the destination, open for binary writing.
        output: "jsonl" or "parquet" (:data:`OUTPUTS`).
        records: for "jsonl", a function from the records (dicts, in input order) to the records
            written; it is given one iterator over the whole corpus, fed as tables are added.
    """

    def __init__(self, file: IO[bytes], output: str,
                 records: Optional[Callable[[Iterator[Dict[str, Any]]], Iterator[Dict[str, Any]]]] = None):
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {sorted(OUTPUTS)}, got {output!r}.")
        self.file, self.output, self.records = file, output, records
        self._parquet = None

    def write_all(self, tables: Iterable[Any]) -> None:
        """Write every table of ``tables`` (an iterable that may block until the next is ready)."""
        if self.output == "parquet":
            import pyarrow.parquet as pq

            writer = None
            try:
                for table in tables:
                    if writer is None:
                        writer = pq.ParquetWriter(self.file, table.schema)
                    writer.write_table(table, row_group_size=max(table.num_rows, 1))
            finally:
                if writer is not None:
                    writer.close()
            return
        stream = (r for table in tables for r in _records(table))
        if self.records is not None:
            stream = self.records(stream)
        dumps, write = json.dumps, self.file.write
        for r in stream:
            write(dumps(r).encode() + b"\n")


def read_corpus_output(path: PathLike) -> Iterator[Dict[str, Any]]:
    """The records of an ``out.jsonl`` / ``out.parquet`` file (or of a shard, ``.arrow``), one dict
    per sequence."""
    path = os.fspath(path)
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=RECORD_ROWS):
            yield from _batch_records(batch)
        return
    if path.endswith(".arrow"):
        with open(path, "rb") as f:
            yield from _records(read_table(f.read()))
        return
    with open(path) as f:
        for line in f:
            yield json.loads(line)
