"""Explaining beyond one process: a corpus through Ray Data, and one batch over several devices.

:func:`explain_corpus` explains a corpus that outgrows one process (millions of reviews, a sweep of
rules) with `Ray Data <https://docs.ray.io/en/latest/data/data.html>`_: the corpus is cut into
shards of ``shard_size`` consecutive sequences; ``map_batches`` hands the shards to a fixed pool of
``num_workers`` actors, each holding ONE compiled :class:`keras_lrp.LRP` built from the model FILE
(``keras_lrp.load_model(model_path)``, so no model is pickled). Only shard descriptions pass through
Ray: each actor reads its shard from the corpus file, explains it, and writes the explanations as
numbers (an Arrow table, :mod:`keras_lrp.corpus_io`) atomically to ``out_dir/shards/shard-00012.arrow``
with a completion record ``shard-00012.done.json`` (row count, SHA-256, the run's fingerprint, the
worker's seconds per stage). The driver merges the shards in input order into ``out_dir/out.jsonl``
(or ``out.parquet``) while the workers run, formatting each number once. A rerun with
``resume=True`` (the default) verifies and keeps every finished shard and computes only the rest.

One JSON line per input sequence, in input order::

    {"index": 12, "target": 3, "score": 1.25, "scores": [0.2, -0.4, 0.1, 1.25, 0.0],
     "relevance": [0.1, -0.02, ...], "rest": 0.003}

``relevance`` is the relevance per token / timestep (summed over the embedding or feature axis,
``Explanation.word_relevance``), ``score`` the explained pre-activation score, ``scores`` every
output's, ``rest`` what reached the initial states (see :class:`keras_lrp.Explanation`);
sequence-output models add ``"timestep"``. ``records=`` rewrites the lines as they are merged
(``keras-lrp explain --engine ray`` writes the local ``--json`` lines this way: text, tokens, class
names). Floats are written with Python's shortest round-trip ``repr``: parsing a line gives
back exactly the float64 (or float32) numbers of the in-process :func:`keras_lrp.explain`.

Sequences of different lengths (a JSON-lines corpus) are grouped by length inside a shard, so no
sequence is ever padded to another one's length and no result depends on its neighbours.

:class:`MultiDeviceExplainer` splits one batch over several devices of one process (every GPU, or
every logical CPU device) with one compiled explainer per device (placed by
:func:`keras_lrp.backend.device_scope`), and concatenates the results in input order; every chunk is explained exactly as the single-device explainer
explains it, so the results are equal bit for bit.

Failures: a worker process that dies (killed, out of memory, node lost) is restarted by Ray Data
and its task retried (shard files are written whole and idempotently; the shards of the task that
were finished are kept); a run that fails (an
error in a worker, the driver killed) is finished by calling :func:`explain_corpus` again with the
same arguments: shards whose files match their completion record are kept, not recomputed.
One run at a time per ``out_dir``.

Ray is an optional dependency: ``pip install "keras-lrp[distributed]"``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from .npy import load_npy
from .corpus_io import OUTPUTS
from .safe_io import AtomicFile, atomic_write, read_own_file

__all__ = ["explain_corpus", "CorpusResult", "read_corpus_output", "MultiDeviceExplainer", "available_devices"]

PathLike = Union[str, "os.PathLike[str]"]
_FORMAT = 3                       # bump when the output format changes: older shards are not reused
_SHARD_NAME = "shard-{:05d}"
_SHARD_SUFFIX = ".arrow"          # an Arrow IPC file (keras_lrp.corpus_io)
_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


# ----------------------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class _Shard:
    """Sequences ``start..stop-1`` of the corpus; for JSON lines, their bytes ``byte_start..byte_stop``."""

    index: int
    start: int
    stop: int
    byte_start: int = 0
    byte_stop: int = 0


@dataclass(frozen=True)
class _Corpus:
    """A corpus file the workers read themselves: ``kind`` is "npy" (fixed length, memory-mapped) or
    "jsonl" (one JSON list per line, any lengths)."""

    kind: str
    path: str
    n: int


@dataclass
class CorpusResult:
    """What :func:`explain_corpus` returns.

    Attributes:
        path: the merged output, one JSON line per input sequence in input order.
        n_sequences: number of sequences explained (lines in ``path``).
        n_shards: number of shards.
        computed: indices of the shards computed by this call.
        reused: indices of the shards found complete from an earlier run and kept.
        seconds: wall time of the call.
        timings: the driver's seconds per stage: "check" (load the model, validate the corpus),
            "hash" (SHA-256 of model and inputs), "verify" (the shards kept from an earlier run),
            "ray" (start the workers, explain; absent when nothing was left to compute), "merge"
            (the output's tail after the last shard: it is written while the workers run). The
            workers' own stages are in each shard's ``shards/shard-*.done.json`` ("seconds",
            "worker_setup").
    """

    path: pathlib.Path
    n_sequences: int
    n_shards: int
    computed: List[int]
    reused: List[int]
    seconds: float
    timings: Dict[str, float] = dataclasses.field(default_factory=dict)


def _sha256_file(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` either does not exist or is complete (a new
    temporary file, fsynced and renamed: a symlink at ``path`` is replaced, never followed)."""
    atomic_write(path, data, durable=True)


def _check_sequence(seq: np.ndarray, where: str, spec: Dict[str, Any]) -> None:
    """One sequence, (time,) token ids or (time, features) floats, against the model's input."""
    if seq.dtype == object or not (np.issubdtype(seq.dtype, np.integer) or np.issubdtype(seq.dtype, np.floating)):
        raise ValueError(f"{where}: not a list of numbers (every sequence of the same shape).")
    if seq.ndim != spec["ndim"]:
        want = "a list of token ids" if spec["tokens"] else "a list of timesteps, each a list of features"
        raise ValueError(f"{where}: has shape {seq.shape}; this model needs {want} {spec['text']}.")
    if seq.shape[0] == 0:
        raise ValueError(f"{where}: empty sequence; give at least one token / timestep.")
    if seq.shape[0] > spec["max_length"]:
        raise ValueError(f"{where}: {seq.shape[0]:,} timesteps, more than max_length={spec['max_length']:,}; "
                         "shorten it, or pass a larger max_length= if the workers have the memory.")
    if spec["time"] is not None and seq.shape[0] != spec["time"]:
        raise ValueError(f"{where}: {seq.shape[0]} timesteps, but the model takes exactly {spec['time']}.")
    if spec["features"] is not None and seq.ndim == 2 and seq.shape[1] != spec["features"]:
        raise ValueError(f"{where}: {seq.shape[1]} features, but the model takes {spec['features']}.")
    if spec["tokens"]:
        if not np.issubdtype(seq.dtype, np.integer):
            raise ValueError(f"{where}: sequences must be integer token ids (for an Embedding model, or with "
                             "embeddings=).")
        if seq.min() < 0 or seq.max() >= spec["vocab"]:
            raise ValueError(f"{where}: token ids must be in 0..{spec['vocab'] - 1} (the vocabulary "
                             f"size is {spec['vocab']}), got {seq.min()}..{seq.max()}.")
    elif not np.all(np.isfinite(seq)):
        raise ValueError(f"{where}: NaN or inf values.")


def _input_spec(explainer) -> Dict[str, Any]:
    """What one sequence must look like for ``explainer`` (a :class:`keras_lrp.Explainer`)."""
    import keras

    shape = tuple(explainer.input_shape)          # (batch, time[, features])
    vocab = None
    if explainer.tokens:
        vocab = next(int(layer.input_dim) for layer in explainer.model.layers
                     if isinstance(layer, keras.layers.Embedding))
    dims = ["time" if d is None else str(d) for d in shape[1:]]
    return {"tokens": bool(explainer.tokens), "ndim": len(shape) - 1, "time": shape[1],
            "features": shape[2] if len(shape) == 3 else None, "vocab": vocab,
            "text": "(" + ", ".join(dims) + ")"}


def _embedding_spec(path: str, spec: Dict[str, Any]) -> Dict[str, Any]:
    """Sequences of token ids looked up in the embedding matrix at ``path`` (vocab, emb_dim), for a
    model on embedding vectors (time, emb_dim)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"embeddings file {path!r} does not exist.")
    matrix = load_npy(path, mmap_mode="r", name=f"embeddings {path}")
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.floating):
        raise ValueError(f"embeddings {path}: need a float matrix (vocab, emb_dim), got {matrix.dtype} {matrix.shape}.")
    if spec["tokens"] or spec["features"] != matrix.shape[1]:
        raise ValueError(f"embeddings {path} has {matrix.shape[1]}-dim vectors, but the model takes "
                         f"{spec['text']}; embeddings= is for models on embedding vectors (time, emb_dim).")
    return {**spec, "tokens": True, "ndim": 1, "features": None, "vocab": int(matrix.shape[0]), "text": "(time,)"}


def _scan_jsonl(path: str, shard_size: int, spec: Dict[str, Any]) -> List[_Shard]:
    """Validate every line of a JSON-lines corpus and cut it into shards by byte offsets."""
    shards: List[_Shard] = []
    start_byte, offset, n = 0, 0, 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            where = f"{path}, line {number}"
            if not line.strip():
                raise ValueError(f"{where}: empty line; write one JSON list of token ids per line.")
            try:
                seq = np.asarray(json.loads(line))
            except (ValueError, TypeError) as err:
                raise ValueError(f"{where}: not a JSON list of numbers ({err}).") from None
            _check_sequence(seq, where, spec)
            n += 1
            offset += len(line)
            if n % shard_size == 0:
                shards.append(_Shard(len(shards), n - shard_size, n, start_byte, offset))
                start_byte = offset
    if n % shard_size:
        shards.append(_Shard(len(shards), n - n % shard_size, n, start_byte, offset))
    if n == 0:
        raise ValueError(f"{path} holds no sequences: nothing to explain.")
    return shards


def _check_npy(path: str, spec: Dict[str, Any]) -> int:
    """Validate a .npy corpus (memory-mapped, in blocks); returns its number of sequences."""
    x = load_npy(path, mmap_mode="r")
    if x.ndim != spec["ndim"] + 1:
        raise ValueError(f"{path} has shape {x.shape}; this model needs (batch, {spec['text'][1:]}.")
    if x.shape[0] == 0:
        raise ValueError(f"{path} holds no sequences: nothing to explain.")
    _check_sequence(np.asarray(x[0]), f"{path}, sequence 0", spec)       # shape and dtype
    for i in range(0, x.shape[0], 65536):                                 # values, block by block
        block = np.asarray(x[i:i + 65536])
        where = f"{path}, sequences {i}..{i + len(block) - 1}"
        if spec["tokens"] and (block.min() < 0 or block.max() >= spec["vocab"]):
            raise ValueError(f"{where}: token ids must be in 0..{spec['vocab'] - 1} (the vocabulary "
                             f"size is {spec['vocab']}), got {block.min()}..{block.max()}.")
        if not spec["tokens"] and not np.all(np.isfinite(block)):
            raise ValueError(f"{where}: NaN or inf values.")
    return int(x.shape[0])


def _corpus_from(inputs, out_dir: pathlib.Path, spec: Dict[str, Any], shard_size: int):
    """(corpus, shards) for a file path or an in-memory array / list of sequences (written to
    ``out_dir`` first, so that every worker reads a file)."""
    if isinstance(inputs, (str, os.PathLike)):
        path = os.fspath(inputs)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"inputs file {path!r} does not exist.")
        if path.endswith(".npy"):
            n = _check_npy(path, spec)
            return _Corpus("npy", os.path.abspath(path), n), _cut(n, shard_size)
        if path.endswith(_JSONL_SUFFIXES):
            shards = _scan_jsonl(path, shard_size, spec)
            return _Corpus("jsonl", os.path.abspath(path), shards[-1].stop), shards
        raise ValueError(f"inputs file {path!r}: give a .npy array (batch, time[, features]) or a "
                         f".jsonl file with one JSON list of token ids per line.")
    if isinstance(inputs, np.ndarray) and inputs.dtype != object:
        data = _npy_bytes(inputs)
        path = out_dir / "inputs.npy"
    else:
        try:
            sequences = [np.asarray(s).tolist() for s in inputs]
        except TypeError:
            raise TypeError("inputs must be a .npy / .jsonl path, an array (batch, time[, features]) or a "
                            f"list of sequences, got {type(inputs).__name__}.") from None
        data = b"".join(json.dumps(s).encode() + b"\n" for s in sequences)
        path = out_dir / "inputs.jsonl"
    if not path.exists() or path.read_bytes() != data:
        _atomic_write(path, data)
    return _corpus_from(path, out_dir, spec, shard_size)


def _npy_bytes(x: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(x), allow_pickle=False)
    return buffer.getvalue()


def _cut(n: int, shard_size: int) -> List[_Shard]:
    return [_Shard(i, start, min(start + shard_size, n)) for i, start in enumerate(range(0, n, shard_size))]


def _read_shard(corpus: _Corpus, shard: _Shard) -> Union[np.ndarray, List[np.ndarray]]:
    """The sequences of one shard: an array (n, time[, features]) from a .npy corpus, or one array
    (time,) / (time, features) per sequence from a JSON-lines corpus."""
    if corpus.kind == "npy":
        x = load_npy(corpus.path, mmap_mode="r")
        return np.asarray(x[shard.start:shard.stop])
    with open(corpus.path, "rb") as f:
        f.seek(shard.byte_start)
        lines = f.read(shard.byte_stop - shard.byte_start).split(b"\n")
    if lines and not lines[-1]:
        lines.pop()   # the last line's newline
    if len(lines) != shard.stop - shard.start:
        raise RuntimeError(f"{corpus.path} changed while it was being explained (shard {shard.index}).")
    return [np.asarray(json.loads(line)) for line in lines]


def _by_length(sequences: Union[np.ndarray, List[np.ndarray]]) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """(positions (g,), batch (g, time[, features])) per sequence length: nothing is ever padded."""
    if isinstance(sequences, np.ndarray):
        yield np.arange(len(sequences)), sequences
        return
    by_length: Dict[int, List[int]] = {}
    for i, seq in enumerate(sequences):
        by_length.setdefault(len(seq), []).append(i)
    for positions in by_length.values():
        yield np.asarray(positions), np.stack([sequences[i] for i in positions])


def _per_sample(value, n: int, name: str) -> Optional[np.ndarray]:
    """None, an int, or one int per sequence -> None or int64 (n,), checked as exact integers
    (nothing wraps around; see :func:`keras_lrp.explainer._per_sample_ints`)."""
    if value is None:
        return None
    from .explainer import _per_sample_ints
    return _per_sample_ints(value, name, n)


# ----------------------------------------------------------------------------------------- worker


class _Stopwatch:
    """Seconds per stage, summed: ``with watch("explain"): ...``; ``watch.seconds`` = {stage: s}."""

    def __init__(self):
        self.seconds: Dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - began


class _ShardExplainer:
    """A Ray Data actor: one compiled explainer, built from the model file, explains whole shards.

    ``__call__`` gets a batch of shard descriptions (columns of :class:`_Shard` fields), writes each
    shard's table (:mod:`keras_lrp.corpus_io`) and its completion record, and yields the record of
    each shard as it finishes. Only these small descriptions and records pass through Ray; the
    worker reads the corpus itself.
    """

    def __init__(self, model_path: str, corpus: _Corpus, shards_dir: str, fingerprint: str,
                 config: Dict[str, Any], target: Optional[np.ndarray], timestep: Optional[np.ndarray],
                 embeddings: Optional[str] = None, fail_after: Optional[int] = None,
                 max_length: Optional[int] = None, backend: Optional[str] = None,
                 method_options: Optional[dict] = None):
        self.created = time.time()
        watch = _Stopwatch()
        with watch("import"):
            from .quiet import start_backend_quietly

            start_backend_quietly(backend)   # the driver's Keras backend
            import keras_lrp
            from .explainer import MAX_LENGTH
        with watch("load"):
            model = keras_lrp.load_model(model_path)
        with watch("compile"):
            self.explainer = keras_lrp.Explainer(model, eps=config["eps"], bias_factor=config["bias_factor"],
                                                 dtype=config["dtype"], rule=config["rule"], method=config["method"],
                                                 method_options=method_options,
                                                 max_length=MAX_LENGTH if max_length is None else max_length)
        self.setup = watch.seconds
        self.corpus, self.shards_dir, self.fingerprint = corpus, pathlib.Path(shards_dir), fingerprint
        self.batch_size, self.feature_relevance = config["batch_size"], config["feature_relevance"]
        self.target, self.timestep = target, timestep
        self.embeddings = None if embeddings is None else load_npy(embeddings)
        self.fail_after, self.done = fail_after, 0

    def __call__(self, batch: Dict[str, np.ndarray]) -> Iterator[Dict[str, np.ndarray]]:
        for row in range(len(batch["index"])):
            if self.fail_after is not None and self.done >= self.fail_after:
                raise RuntimeError(f"simulated worker failure after {self.done} shards (test hook)")
            shard = _Shard(*(int(batch[f.name][row]) for f in dataclasses.fields(_Shard)))
            # a retried task (its worker died) keeps the shards it had finished before
            finished = _finished_shard(self.shards_dir, shard, self.fingerprint)
            done = finished.record if finished is not None else self._explain_shard(shard)
            self.done += 1
            yield {key: np.asarray([done[key]]) for key in ("shard", "lines", "started", "finished")}

    def _explain_shard(self, shard: _Shard) -> Dict[str, Any]:
        from .corpus_io import ExplainedGroup, shard_table, table_bytes

        started, watch = time.time(), _Stopwatch()
        with watch("read"):
            sequences = _read_shard(self.corpus, shard)
            if self.embeddings is not None:     # token ids -> embedding vectors (time, emb_dim)
                sequences = (self.embeddings[sequences] if isinstance(sequences, np.ndarray)
                             else [self.embeddings[ids] for ids in sequences])
        groups = []
        with watch("explain"):
            for positions, x in _by_length(sequences):
                rows = shard.start + positions
                groups.append(ExplainedGroup(positions, self.explainer.attribute(
                    x, target=None if self.target is None else self.target[rows],
                    timestep=None if self.timestep is None else self.timestep[rows], batch_size=self.batch_size)))
        with watch("serialise"):
            data = table_bytes(shard_table(shard.start, shard.stop - shard.start, groups, self.feature_relevance))
        with watch("hash"):
            sha256 = hashlib.sha256(data).hexdigest()
        name = _SHARD_NAME.format(shard.index)
        with watch("write"):
            # Not fsynced: a shard is trusted only when its bytes match the SHA-256 of its completion
            # record, so a file cut short by a crash of the machine is found and recomputed.
            atomic_write(self.shards_dir / f"{name}{_SHARD_SUFFIX}", data)
        done = {"shard": shard.index, "start": shard.start, "stop": shard.stop, "lines": shard.stop - shard.start,
                "sha256": sha256, "fingerprint": self.fingerprint, "started": started, "finished": time.time(),
                "worker": f"{socket.gethostname()}:{os.getpid()}", "seconds": watch.seconds,
                "worker_created": self.created, "worker_setup": self.setup}
        atomic_write(self.shards_dir / f"{name}.done.json", json.dumps(done).encode())
        return done


class _FinishedShard(NamedTuple):
    """A shard's completion record and the bytes of its table, checked against each other."""

    record: Dict[str, Any]
    data: bytes


def _finished_shard(shards_dir: pathlib.Path, shard: _Shard, fingerprint: str) -> Optional[_FinishedShard]:
    """``shard``'s record and table if a run finished it: the completion record belongs to this
    run's fingerprint and holds the shard's row count and the file's SHA-256; else None."""
    name = _SHARD_NAME.format(shard.index)
    try:
        done = json.loads(read_own_file(shards_dir / f"{name}.done.json"))
        data = read_own_file(shards_dir / f"{name}{_SHARD_SUFFIX}")
    except (OSError, ValueError):
        return None
    if not isinstance(done, dict) or done.get("fingerprint") != fingerprint \
            or done.get("lines") != shard.stop - shard.start or hashlib.sha256(data).hexdigest() != done.get("sha256"):
        return None
    return _FinishedShard(done, data)


def _shard_complete(shards_dir: pathlib.Path, shard: _Shard, fingerprint: str) -> bool:
    """Whether an earlier run finished ``shard`` (see :func:`_finished_shard`)."""
    return _finished_shard(shards_dir, shard, fingerprint) is not None


# ----------------------------------------------------------------------------------------- driver


def explain_corpus(model_path: PathLike, inputs, out_dir: PathLike, *, address: Optional[str] = None,
                   num_workers: int = 1, cpus_per_worker: float = 1, batch_size: int = 256,
                   shard_size: int = 4096, target=None, timestep=None, eps: float = 1e-3,
                   bias_factor: float = 0.0, rule: str = "all", dtype: str = "float32", method: str = "lrp",
                   method_options: Optional[dict] = None, embeddings: Optional[PathLike] = None,
                   feature_relevance: bool = False, resume: bool = True,
                   max_length: Optional[int] = None, quiet: bool = True, output: str = "jsonl",
                   records: Optional[Callable[[Iterator[Dict[str, Any]]], Iterator[Dict[str, Any]]]] = None,
                   _fail_after_shards: Optional[int] = None) -> CorpusResult:
    """Explain a corpus with LRP (or a gradient or perturbation baseline) on a pool of Ray Data actors;
    write one JSON line (or Parquet row) per sequence.

    Args:
        model_path: a model file ``keras_lrp.load_model`` reads (.keras, Keras 2 / tf.keras .h5);
            every worker loads it, so on a cluster it must be at this path on every node.
        inputs: a ``.npy`` file of (N, time, features) floats or (N, time) token ids, a JSON-lines
            file (``.jsonl``) with one list of token ids (or of feature vectors) per line, any
            lengths; or such an array / list of sequences in memory (written to ``out_dir`` first).
        out_dir: output folder: ``shards/`` (one file per finished shard), ``out.jsonl`` or
            ``out.parquet`` (all, in input order), ``manifest.json`` (the run's settings). On a
            cluster, shared storage.
        address: a Ray cluster's address (``"auto"``, ``"ray://host:10001"``); None starts a local
            instance (or uses the one this process has already started with ``ray.init``).
        num_workers: number of actors, each holding one compiled explainer.
        cpus_per_worker: CPUs Ray reserves per actor.
        batch_size: samples per compiled call inside an actor.
        shard_size: sequences per shard, the unit of work, of output files and of resumption.
        target, timestep, eps, bias_factor, rule, dtype, method, method_options: as for
            :func:`keras_lrp.explain` (``target`` / ``timestep`` also one int per sequence); every
            worker gets the same ``method_options``, recorded in the manifest (arrays by digest).
        embeddings: for a model on embedding vectors (time, emb_dim): a .npy matrix (vocab, emb_dim);
            ``inputs`` are then token ids, looked up in it by the workers (as the CLI's shipped models).
        feature_relevance: write the full (time, features) relevance instead of per-timestep sums.
        resume: keep the shards an earlier run with identical settings and inputs finished; False
            deletes ``out_dir``'s shards and starts over.
        max_length: the longest sequence explained (default 100,000, as :func:`keras_lrp.explain`);
            a corpus with a longer one is refused before any worker starts.
        quiet: hide Ray's logs (its start-up lines, Ray Data's execution plan, the core worker's C++
            lines) when this call starts Ray; False shows them (``keras-lrp ... --debug``).
        output: ``"jsonl"`` (``out.jsonl``) or ``"parquet"`` (``out.parquet``: the same columns,
            numbers in the explainer's dtype; no JSON to format, for large corpora). The shards do
            not depend on it: a finished run merges into the other format without recomputing.
        records: a function from the merged records (dicts, in input order) to the records written
            to ``out.jsonl``, run by the driver at the merge; the shards keep the format above.

    Returns:
        :class:`CorpusResult`; the explanations are in ``result.path``.

    Raises:
        ValueError / TypeError / FileNotFoundError: bad model, inputs or settings, before any
        worker starts; ValueError: ``out_dir`` holds a run with other settings and ``resume=True``.
    """
    began = time.time()
    for name, value in (("num_workers", num_workers), ("batch_size", batch_size), ("shard_size", shard_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if not (isinstance(cpus_per_worker, (int, float)) and cpus_per_worker > 0):
        raise ValueError(f"cpus_per_worker must be a positive number, got {cpus_per_worker!r}.")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {sorted(OUTPUTS)}, got {output!r}.")
    if records is not None and output != "jsonl":
        raise ValueError("records= rewrites JSON lines: it needs output='jsonl'.")
    try:
        import ray  # noqa: F401  (fail before any other work)
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError('explain_corpus needs Ray Data: pip install "keras-lrp[distributed]" '
                          '(or pip install "ray[data]").') from None
    import keras_lrp
    from .quiet import keras_backend_name

    watch = _Stopwatch()                 # the driver's stages, CorpusResult.timings
    checked = time.perf_counter()
    model_path = os.path.abspath(os.fspath(model_path))
    # Load and check the model here, so that a bad file or an unsupported layer fails before any
    # worker starts (the workers load the same file again).
    from .explainer import MAX_LENGTH

    max_length = MAX_LENGTH if max_length is None else max_length
    explainer = keras_lrp.Explainer(keras_lrp.load_model(model_path), eps=eps, bias_factor=bias_factor,
                                    dtype=dtype, rule=rule, method=method, method_options=method_options,
                                    max_length=max_length)
    spec = {**_input_spec(explainer), "max_length": max_length}
    if embeddings is not None:
        embeddings = os.path.abspath(os.fspath(embeddings))
        spec = _embedding_spec(embeddings, spec)
    out_dir = pathlib.Path(out_dir)
    shards_dir = out_dir / "shards"
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus, shards = _corpus_from(inputs, out_dir, spec, shard_size)
    target_arr = _per_sample(target, corpus.n, "target")
    timestep_arr = _per_sample(timestep, corpus.n, "timestep")
    if target_arr is not None and ((target_arr < 0) | (target_arr >= explainer.n_outputs)).any():
        raise ValueError(f"target out of range: the model has {explainer.n_outputs} outputs "
                         f"(valid 0..{explainer.n_outputs - 1}).")
    if explainer.has_time_axis and timestep_arr is None:
        raise ValueError("this model's output has a time axis: pass timestep= (an int or one per sequence).")
    if not explainer.has_time_axis and timestep_arr is not None:
        raise ValueError("timestep is only for models whose output has a time axis.")
    watch.seconds["check"] = time.perf_counter() - checked

    with watch("hash"):
        config = {"format": _FORMAT, "keras_lrp": keras_lrp.__version__, "eps": float(eps),
                  "bias_factor": float(bias_factor), "rule": rule, "dtype": dtype, "method": method,
                  "method_options": _options_record(method_options), "batch_size": int(batch_size),
                  "shard_size": int(shard_size),
                  "feature_relevance": bool(feature_relevance), "n": corpus.n,
                  "model_sha256": _sha256_file(model_path), "inputs_sha256": _sha256_file(corpus.path),
                  "embeddings_sha256": None if embeddings is None else _sha256_file(embeddings),
                  "target": _array_digest(target_arr), "timestep": _array_digest(timestep_arr)}
    fingerprint = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    manifest = {"fingerprint": fingerprint, "model_path": model_path, "inputs": corpus.path,
                "n_shards": len(shards), **config}
    _prepare_out_dir(out_dir, shards_dir, manifest, resume)

    with watch("verify"):
        reused = [s.index for s in shards if resume and _shard_complete(shards_dir, s, fingerprint)]
    kept = frozenset(reused)
    todo = [s for s in shards if s.index not in kept]
    merge = _StreamingMerge(shards_dir, shards, fingerprint, out_dir / OUTPUTS[output], output, records)
    try:
        for index in reused:
            merge.complete(index)
        if todo:
            with watch("ray"):
                _run_ray(todo, address, num_workers, cpus_per_worker,
                         dict(model_path=model_path, corpus=corpus, shards_dir=str(shards_dir.resolve()),
                              fingerprint=fingerprint, config=config, target=target_arr, timestep=timestep_arr,
                              embeddings=embeddings, fail_after=_fail_after_shards, max_length=max_length,
                              backend=keras_backend_name(), method_options=method_options),
                         quiet, on_shard=merge.complete)
    except BaseException:
        merge.abort()
        raise
    with watch("merge"):
        path = merge.finish()
    return CorpusResult(path=path, n_sequences=corpus.n, n_shards=len(shards), computed=[s.index for s in todo],
                        reused=reused, seconds=time.time() - began, timings=watch.seconds)


def _options_record(options: Optional[dict]) -> Optional[dict]:
    """``method_options`` as JSON, for the manifest and the fingerprint: numbers as they are, arrays
    by shape, dtype and SHA-256 of their bytes."""
    def part(value):
        if isinstance(value, (list, tuple)):
            return [part(v) for v in value]
        if isinstance(value, np.generic):
            value = value.item()
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        a = np.ascontiguousarray(value)
        return {"shape": list(a.shape), "dtype": str(a.dtype), "sha256": hashlib.sha256(a.tobytes()).hexdigest()}

    return None if not options else {str(k): part(v) for k, v in sorted(options.items())}


def _array_digest(a: Optional[np.ndarray]) -> Optional[str]:
    return None if a is None else hashlib.sha256(np.ascontiguousarray(a, np.int64).tobytes()).hexdigest()


def _prepare_out_dir(out_dir: pathlib.Path, shards_dir: pathlib.Path, manifest: Dict[str, Any],
                     resume: bool) -> None:
    path = out_dir / "manifest.json"
    if path.exists() and resume:
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
        if old.get("fingerprint") != manifest["fingerprint"]:
            changed = sorted(k for k in manifest if k not in ("fingerprint",) and old.get(k) != manifest[k])
            raise ValueError(f"{out_dir} holds a run with other settings or inputs (differs in: "
                             f"{', '.join(changed) or 'format'}); use another out_dir, or resume=False "
                             "to discard it.")
    if not resume:
        shutil.rmtree(shards_dir, ignore_errors=True)
        for name in OUTPUTS.values():
            (out_dir / name).unlink(missing_ok=True)
    shards_dir.mkdir(exist_ok=True)
    # temporary files of a run killed while writing them (AtomicFile's ".<name>.<random>.part<ext>")
    for stale in [*out_dir.glob(".out.*.part.*"), *shards_dir.glob(".shard-*.part.*")]:
        stale.unlink(missing_ok=True)
    _atomic_write(path, json.dumps(manifest, indent=1, sort_keys=True).encode())


def _run_ray(todo: List[_Shard], address: Optional[str], num_workers: int, cpus_per_worker: float,
             actor_kwargs: Dict[str, Any], quiet: bool = True,
             on_shard: Callable[[int], None] = lambda index: None) -> None:
    """Explain the ``todo`` shards on a pool of Ray Data actors; ``on_shard(index)`` as each finishes."""
    from .quiet import quiet_ray

    with quiet_ray(debug=not quiet) as around_init:
        _run_ray_data(todo, address, num_workers, cpus_per_worker, actor_kwargs, around_init, quiet, on_shard)


def _run_ray_data(todo, address, num_workers, cpus_per_worker, actor_kwargs, around_init, quiet, on_shard) -> None:
    import ray
    import ray.data

    started_here = not ray.is_initialized()
    if started_here:
        with around_init():
            ray.init(address=address, include_dashboard=False, log_to_driver=not quiet,
                     logging_level="error" if quiet else "warning",
                     runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}})
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        items = [dataclasses.asdict(s) for s in todo]
        dataset = ray.data.from_items(items, override_num_blocks=len(items))   # one shard per block
        pool = ray.data.ActorPoolStrategy(size=min(num_workers, len(items)))
        explained = dataset.map_batches(_ShardExplainer, batch_size=_shards_per_call(len(items), num_workers),
                                        compute=pool, num_cpus=cpus_per_worker, fn_constructor_kwargs=actor_kwargs)
        for row in explained.iter_rows():   # stream: records arrive as shards finish
            on_shard(int(row["shard"]))
    finally:
        if started_here:
            ray.shutdown()


def _shards_per_call(n_shards: int, num_workers: int) -> int:
    """Shards per Ray Data task: Ray spends ~5-15 ms between two tasks of an actor (dispatch, blocks),
    so a task takes several shards, while every worker still gets about four tasks to balance the
    load (at most 8 shards a task: a retried task redoes them)."""
    return max(1, min(8, n_shards // (4 * num_workers)))


class _Incomplete(Exception):
    """A shard the merge needs was not finished (or its file does not match its record)."""


class _StreamingMerge:
    """Writes the merged output (:mod:`keras_lrp.corpus_io`) in a thread while the workers run:
    a shard's table is appended once it and every shard before it are complete (verified against
    their completion records), so the driver formats the output alongside the workers instead of
    after them. :meth:`finish` waits and moves the file into place; :meth:`abort` drops it."""

    def __init__(self, shards_dir: pathlib.Path, shards: Sequence[_Shard], fingerprint: str, path: pathlib.Path,
                 output: str, records: Optional[Callable[[Iterator[Dict[str, Any]]], Iterator[Dict[str, Any]]]]):
        self.shards_dir, self.shards, self.fingerprint = shards_dir, list(shards), fingerprint
        self.output, self.records = output, records
        self._complete: set = set()
        self._closed = False
        self._changed = threading.Condition()
        self._error: Optional[BaseException] = None
        self._file = AtomicFile(path, durable=True)     # created now: an unwritable folder fails before Ray
        self._thread = threading.Thread(target=self._write, name="keras-lrp merge", daemon=True)
        self._thread.start()

    def complete(self, index: int) -> None:
        """Shard ``index`` is finished (its files are written). Raises the merge's error, if it
        failed (a ``records`` function that raised, a full disk), so that the run stops now."""
        if self._error is not None:
            raise self._error
        with self._changed:
            self._complete.add(index)
            self._changed.notify()

    def _tables(self) -> Iterator[Any]:
        from .corpus_io import read_table

        for shard in self.shards:
            with self._changed:
                while shard.index not in self._complete and not self._closed:
                    self._changed.wait()
            finished = _finished_shard(self.shards_dir, shard, self.fingerprint) \
                if shard.index in self._complete else None
            if finished is None:
                raise _Incomplete(shard.index)
            yield read_table(finished.data)

    def _write(self) -> None:
        from .corpus_io import OutputWriter

        try:
            OutputWriter(self._file.open("wb"), self.output, self.records).write_all(self._tables())
        except BaseException as err:  # re-raised by finish()
            self._error = err

    def _close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._thread.join()

    def abort(self) -> None:
        """Stop and remove the partial output (the run failed)."""
        self._close()
        self._file.discard()

    def finish(self) -> pathlib.Path:
        """Wait for the last shard's lines; returns the output's path."""
        self._close()
        if self._error is not None:
            self._file.discard()
            if isinstance(self._error, _Incomplete):
                missing = [s.index for s in self.shards if not _shard_complete(self.shards_dir, s, self.fingerprint)]
                raise RuntimeError(f"shards {missing[:10]} did not complete; rerun with resume=True to finish "
                                   "them.") from None
            raise self._error
        return self._file.commit()


def read_corpus_output(path: PathLike) -> Iterator[Dict[str, Any]]:
    """The records of an ``out.jsonl`` / ``out.parquet`` (or shard) file, one dict per sequence."""
    from .corpus_io import read_corpus_output as read

    return read(path)


# ----------------------------------------------------------------------------------------- devices


def available_devices() -> List[str]:
    """Every GPU of this process, or, without GPUs, every (logical) CPU device."""
    from . import backend

    return backend.available_devices()


class MultiDeviceExplainer:
    """One compiled explainer per device; a batch is split into chunks of ``batch_size`` samples,
    the chunks are dealt round-robin to the devices (one thread each), and the results are
    concatenated in input order.

    Each chunk is the chunk :meth:`keras_lrp.Explainer.attribute` would compute with the same
    ``batch_size`` on one device, so results equal the single-device ones bit for bit (on devices
    of one kind). For logical CPU devices configure them before TensorFlow initialises::

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    Args:
        model: as for :class:`keras_lrp.Explainer`.
        devices: device names (``"/device:CPU:1"``, ``"GPU:0"``); None = :func:`available_devices`.
        eps, bias_factor, dtype, rule, method: as for :class:`keras_lrp.Explainer`.
    """

    def __init__(self, model, devices: Optional[Sequence[str]] = None, *, eps: float = 1e-3,
                 bias_factor: float = 0.0, dtype: str = "float32", rule: str = "all", method: str = "lrp"):
        from . import backend
        from .explainer import Explainer

        self.devices = list(devices) if devices is not None else available_devices()
        if not self.devices:
            raise ValueError("devices is empty: give at least one device name, e.g. ['/CPU:0'].")
        for device in self.devices:
            if not backend.device_exists(device):
                raise ValueError(f"device {device!r} does not exist in this process; it has "
                                 f"{backend.available_devices()}.")
        self.explainers = []
        for device in self.devices:
            with backend.device_scope(device):
                self.explainers.append(Explainer(model, eps=eps, bias_factor=bias_factor, dtype=dtype,
                                                 rule=rule, method=method))
        self._warm = False

    def attribute(self, inputs, target=None, timestep=None, batch_size: int = 256):
        """As :meth:`keras_lrp.Explainer.attribute`, spread over the devices; returns one
        :class:`keras_lrp.Explanation` (batch, ...) in input order."""
        from . import backend
        from .explanation import concatenate

        x = np.asarray(inputs)
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError(f"inputs must be a non-empty batch (batch, time[, features]), got shape {x.shape}.")
        n = x.shape[0]
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        targets = _per_sample(target, n, "target")
        steps = _per_sample(timestep, n, "timestep")
        chunks = [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]

        def run(k: int, s: slice):
            with backend.device_scope(self.devices[k]):
                return self.explainers[k].attribute(x[s], target=None if targets is None else targets[s],
                                                    timestep=None if steps is None else steps[s],
                                                    batch_size=batch_size)

        results: List[Any] = [None] * len(chunks)
        if not self._warm:   # trace every device's function one at a time (and validate the inputs)
            for k in range(len(self.devices)):
                if k < len(chunks):
                    results[k] = run(k, chunks[k])
            self._warm = True
        errors: List[BaseException] = []

        def worker(k: int):
            try:
                for c in range(k, len(chunks), len(self.devices)):
                    if results[c] is None:
                        results[c] = run(k, chunks[c])
            except BaseException as err:  # re-raised in the caller's thread
                errors.append(err)

        threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(len(self.devices))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return concatenate(results)
