"""Would a cheaper float64 keep the golden agreement? Float32 forward pass + float64 relevance pass.

    python bench/bench_mixed_precision.py

Issue 12 asks for float64 at <= 1.5x float32, e.g. a float32 forward pass with float64 only in the
relevance pass, but only if the 48 golden cases (Arras et al. 2017's reference code, float64) still
agree to 1e-8. This probe builds that variant from the engine's own pieces (the float32 walk's
forward caches, cast to float64, then the float64 walk's relevance pass) and prints
1. its error against the golden relevances, next to full float64 and full float32;
2. its time next to float32 and float64 on a batch of 256 sequences, T = 100.
It is a measurement, not a product path: the engine does not offer this mode (see the README, Speed).
It reads the golden cases through ``tests/conftest.py`` (needs the test extra: pytest).
"""
import dataclasses
import os
import pathlib
import statistics
import sys
import time

from keras_lrp.quiet import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()     # TensorFlow's start-up lines hidden

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_lrp  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
from conftest import GOLDEN_WEIGHT_KEYS, data_file, golden_cases  # noqa: E402


def to_float64(cache):
    """Every float32 tensor in a walk's caches (dicts, tuples, dataclasses of tensors) as float64."""
    if dataclasses.is_dataclass(cache) and not isinstance(cache, type):
        return dataclasses.replace(cache, **{f.name: to_float64(getattr(cache, f.name))
                                             for f in dataclasses.fields(cache) if f.name != "cell"})
    if isinstance(cache, dict):
        return {k: to_float64(v) for k, v in cache.items()}
    if isinstance(cache, tuple) and hasattr(cache, "_fields"):
        return type(cache)(*[to_float64(v) for v in cache])
    if isinstance(cache, (list, tuple)):
        return type(cache)(to_float64(v) for v in cache)
    if hasattr(cache, "dtype") and cache.dtype == tf.float32:
        return tf.cast(cache, tf.float64)
    return cache


def mixed_explainer(model, eps, bias_factor, classes):
    """(x float32 (batch, time, features), target (batch,)) -> relevance float64: forward in float32."""
    walk32 = keras_lrp.LRP(model, eps=eps, bias_factor=bias_factor, dtype="float32")._walk
    walk64 = keras_lrp.LRP(model, eps=eps, bias_factor=bias_factor, dtype="float64")._walk

    @tf.function
    def run(x, target):
        out, _, caches = walk32.forward([x])
        out = tf.cast(out, tf.float64)
        relevance, _ = walk64.relevance(to_float64(caches), tf.one_hot(target, classes, dtype=tf.float64) * out)
        return relevance[0]
    return run


def main():
    golden = dict(np.load(data_file("fixtures/arras2017_golden.npz")))
    model = keras.Sequential([keras.Input((None, 60)), keras.layers.Bidirectional(keras.layers.LSTM(60)),
                              keras.layers.Dense(5, use_bias=False)])
    model.set_weights([golden[k] for k in GOLDEN_WEIGHT_KEYS[:-1]])   # the Dense has no bias
    errors = {}
    mixed = {}
    for name, x, target, eps, bf, _, relevance, _ in golden_cases(golden):
        setting = name.split("_")[1]        # "eps" or "cons"
        run = mixed.setdefault((eps, bf), mixed_explainer(model, eps, bf, 5))
        results = {
            "float64": keras_lrp.explain(model, x[None], target, eps=eps, bias_factor=bf, dtype="float64").relevance[0],
            "float32 forward + float64 relevance":
                run(tf.constant(x[None], tf.float32), tf.constant([target])).numpy()[0],
            "float32": keras_lrp.explain(model, x[None], target, eps=eps, bias_factor=bf, dtype="float32").relevance[0]}
        for name, r in results.items():
            errors.setdefault((setting, name), []).append(np.abs(r - relevance).max() / np.abs(relevance).max())
    print("1. max relative error against the golden relevances (24 sentences each; goal <= 1e-8)")
    print(f"{'cases':>22} {'variant':>36} {'median':>9} {'max':>9}")
    for (setting, name), errs in errors.items():
        label = "eps=0.001, bf=0" if setting == "eps" else "eps=0, bf=1 (conserving)"
        print(f"{label:>22} {name:>36} {np.median(errs):>9.1e} {np.max(errs):>9.1e}")

    x = np.random.default_rng(0).standard_normal((256, 100, 60)).astype("float32")
    e32, e64 = keras_lrp.LRP(model), keras_lrp.LRP(model, dtype="float64")
    run, xt, target = mixed_explainer(model, 1e-3, 0.0, 5), tf.constant(x), tf.zeros([256], tf.int32)
    fns = {"float32": lambda: e32.attribute(x, 0), "float64": lambda: e64.attribute(x, 0),
           "float32 forward + float64 relevance": lambda: run(xt, target).numpy()}
    times = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(7):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    t32 = statistics.median(times["float32"])
    print("\n2. batch 256, T = 100, Bidirectional(LSTM(60)) + Dense(5): median of 7 interleaved calls")
    for k, ts in times.items():
        print(f"{k:>36} {statistics.median(ts):8.3f} s  {statistics.median(ts) / t32:5.2f}x float32")


if __name__ == "__main__":
    main()
