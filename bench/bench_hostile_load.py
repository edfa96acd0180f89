"""Peak memory of load_model on chunk-bomb model files, and the time its file checks cost.

* ``--bomb``: a small LSTM model whose Dense bias, declared (2,) float32, is stored in one chunk
  of 1 GiB of zeros, deflated (1 MB file; also inside a ``.keras``). Each file is loaded in a
  fresh process; the peak resident memory (``ru_maxrss``) is printed next to the genuine file's.
* ``--timing``: median wall time of ``load_model`` (with all checks), of the HDF5 audit alone
  (``_audit_hdf5``: links, declared sizes, chunks) and of the scan for non-finite weights, on the
  shipped SST models, the tests' ``.h5`` fixture and a gzip + shuffle copy of it (whose chunks the
  audit inflates).

    python bench/bench_hostile_load.py --bomb --timing
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from keras_lrp.quiet import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()     # TensorFlow's start-up lines hidden

_CHILD = """
import json, os, resource, sys, time
sys.path.insert(0, {root!r})
from keras_lrp.io import load_model
start = time.perf_counter()
try:
    load_model({path!r})
    outcome = "loaded"
except Exception as exc:
    outcome = type(exc).__name__
print(json.dumps({{"outcome": outcome, "seconds": time.perf_counter() - start,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def _child(path: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD.format(root=ROOT, path=path)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _zeros_deflated(nbytes: int) -> bytes:
    packer, block = zlib.compressobj(6), bytes(2**20)
    return b"".join([packer.compress(block) for _ in range(nbytes // 2**20)] + [packer.flush()])


def _bomb_weights(f, stream: bytes) -> None:
    """The Dense bias (the one (2,) dataset) stored in one 1 GiB chunk."""
    found = []
    f.visititems(lambda n, obj: found.append(n) if getattr(obj, "shape", None) == (2,) else None)
    (name,) = found
    del f[name]
    dataset = f.create_dataset(name, shape=(2,), maxshape=(None,), chunks=(2**28,),
                               dtype="float32", compression="gzip")
    dataset.id.write_direct_chunk((0,), stream)


def bomb(folder: str) -> None:
    import h5py
    import keras

    inp = keras.Input((None, 4))
    model = keras.Model(inp, keras.layers.Dense(2, name="out")(keras.layers.LSTM(3)(inp)))
    stream = _zeros_deflated(2**30)
    files = {}
    for ext in ("h5", "keras"):
        genuine = os.path.join(folder, f"genuine.{ext}")
        model.save(genuine)
        files[f"genuine .{ext}"] = genuine
    h5 = os.path.join(folder, "bomb.h5")
    with open(files["genuine .h5"], "rb") as src, open(h5, "wb") as dst:
        dst.write(src.read())
    with h5py.File(h5, "r+") as f:
        _bomb_weights(f, stream)
    files["bomb .h5"] = h5
    with zipfile.ZipFile(files["genuine .keras"]) as z:
        members = {n: z.read(n) for n in z.namelist()}
    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "r+") as f:
        _bomb_weights(f, stream)
    members["model.weights.h5"] = buffer.getvalue()
    files["bomb .keras"] = os.path.join(folder, "bomb.keras")
    with zipfile.ZipFile(files["bomb .keras"], "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    print(f"{'file':<14} {'size':>10} {'outcome':<20} {'peak RSS':>10} {'seconds':>8}")
    for label, path in files.items():
        result = _child(path)
        print(f"{label:<14} {os.path.getsize(path):>10,} {result['outcome']:<20} "
              f"{result['peak_mib']:>7.0f} MiB {result['seconds']:>8.2f}")


def _compressed_copy(src: str, dst: str) -> str:
    """``src`` with every dataset rewritten gzip + shuffle compressed (chunked: decoded by the audit)."""
    import h5py

    with open(src, "rb") as f, open(dst, "wb") as g:
        g.write(f.read())
    with h5py.File(dst, "r+") as f:
        names = []
        f.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
        for name in names:
            data = f[name][()]
            del f[name]
            f.create_dataset(name, data=data, compression="gzip", shuffle=True)
    return dst


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _audit(path: str) -> None:
    import h5py

    from keras_lrp.io import _audit_hdf5

    if path.endswith(".keras"):
        with zipfile.ZipFile(path) as z:
            handle = h5py.File(io.BytesIO(z.read("model.weights.h5")), "r")
    else:
        handle = h5py.File(path, "r")
    with handle:
        _audit_hdf5(path, handle, 2**40)


def timing(repeats: int, folder: str) -> None:
    from keras_lrp.io import load_model

    paths = [os.path.join(ROOT, "models", n) for n in ("sst5_bilstm.keras", "sst2_bilstm.keras")]
    paths.append(os.path.join(ROOT, "tests", "data", "fixtures", "keras2_sst_bilstm.h5"))
    paths.append(_compressed_copy(paths[-1], os.path.join(folder, "keras2_sst_bilstm_gzip.h5")))
    try:
        from keras_lrp.io.weights import non_finite_weights
    except ImportError:   # before the non-finite check existed
        non_finite_weights = None
    print(f"{'file':<28} {'load_model':>11} {'HDF5 audit':>11} {'non-finite scan':>16}   "
          f"(median of {repeats})")
    for path in paths:
        model = load_model(path)   # warm up imports and tracing
        scan = (f"{_median_ms(lambda: non_finite_weights(model), repeats):>13.2f} ms"
                if non_finite_weights else f"{'-':>16}")
        print(f"{os.path.basename(path):<28} {_median_ms(lambda: load_model(path), repeats):>8.1f} ms "
              f"{_median_ms(lambda: _audit(path), repeats):>8.2f} ms {scan}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bomb", action="store_true", help="peak memory on chunk bombs")
    parser.add_argument("--timing", action="store_true", help="time of load_model's checks")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if args.bomb:
        with tempfile.TemporaryDirectory() as folder:
            bomb(folder)
    if args.timing:
        with tempfile.TemporaryDirectory() as folder:
            timing(args.repeats, folder)


if __name__ == "__main__":
    main()
