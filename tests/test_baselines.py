"""IG, occlusion and Shapley sampling (keras_lrp.baselines) against plain Python loops over the
Keras layers themselves (float64 layers, eager calls, one perturbation at a time)."""
import itertools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_lrp
from keras_lrp import Explanation, explain

D = 3    # embedding size


@pytest.fixture(scope="module")
def text_model():
    """Embedding(mask_zero=True) -> Bi-LSTM -> Dense, float64; ``score(vectors, mask)`` runs the layers
    after the Embedding on given vectors (the oracle's function of the embedding vectors)."""
    keras.utils.set_random_seed(3)
    emb = keras.layers.Embedding(12, D, mask_zero=True, dtype="float64")
    rnn = keras.layers.Bidirectional(keras.layers.LSTM(4, dtype="float64"), dtype="float64")
    head = keras.layers.Dense(3, dtype="float64")
    ids = keras.Input((None,), dtype="int32")
    model = keras.Model(ids, head(rnn(emb(ids))))
    # bias-free embeddings are small: scale them so that the scores are far from linear
    emb.embeddings.assign(emb.embeddings.numpy() * 30)

    def score(vectors, mask, target):
        out = head(rnn(tf.constant(vectors), mask=tf.constant(mask))).numpy()
        return out[np.arange(len(out)), target]

    return model, emb, score


IDS = np.array([[0, 0, 3, 4, 5], [1, 2, 3, 9, 11], [0, 7, 8, 2, 6]])   # left-padded as pad_sequences does


def _vectors(emb, ids):
    return emb.embeddings.numpy()[ids]


def _active(ids):
    return [list(np.flatnonzero(row)) for row in ids]


def test_occlusion_equals_the_loop_and_spreads_each_value_over_its_vector(text_model):
    model, emb, score = text_model
    for window in (1, 2, 4):
        e = explain(model, IDS, method="occlusion", method_options={"window": window}, dtype="float64")
        for i, row in enumerate(IDS):
            v, mask, t = _vectors(emb, row[None]), (row != 0)[None], e.target[i:i + 1]
            f_x = score(v, mask, t)[0]
            steps = _active(IDS)[i]
            n_windows = max(len(steps) - window + 1, 1)
            total, count = np.zeros(len(row)), np.zeros(len(row))
            for start in range(n_windows):
                occluded = v.copy()
                covered = steps[start:start + window]
                occluded[0, covered] = 0.0
                drop = f_x - score(occluded, mask, t)[0]
                total[covered] += drop
                count[covered] += 1
            expected = total / np.maximum(count, 1)
            np.testing.assert_allclose(e.word_relevance[i], expected, rtol=1e-9, atol=1e-12)
            assert np.all(e.relevance[i, row == 0] == 0)
            # each step's value is spread equally over its D features
            np.testing.assert_allclose(e.relevance[i], np.repeat(expected[:, None] / D, D, axis=1), rtol=1e-12, atol=0)
        np.testing.assert_allclose(e.rest, [score(np.zeros((1, 5, D)), (r != 0)[None], e.target[i:i + 1])[0]
                                            for i, r in enumerate(IDS)], rtol=1e-9, atol=1e-12)


def _exact_shapley(f, players):
    """Shapley values by enumerating every coalition: f(frozenset of players) -> score."""
    n = len(players)
    phi = {}
    for p in players:
        others = [q for q in players if q != p]
        phi[p] = sum(math.factorial(len(s)) * math.factorial(n - len(s) - 1) / math.factorial(n)
                     * (f(frozenset(s) | {p}) - f(frozenset(s)))
                     for r in range(n) for s in itertools.combinations(others, r))
    return phi


def test_shapley_with_all_permutations_is_the_exact_shapley_value(text_model):
    model, emb, score = text_model
    ids = np.array([[4, 5, 6], [0, 7, 2]])
    e = explain(model, ids, method="shapley", method_options={"samples": "all"}, dtype="float64")
    for i, row in enumerate(ids):
        v, mask, t = _vectors(emb, row[None]), (row != 0)[None], e.target[i:i + 1]

        def f(coalition):
            kept = v.copy()
            kept[0, [s for s in np.flatnonzero(row) if s not in coalition]] = 0.0
            return score(kept, mask, t)[0]

        phi = _exact_shapley(f, list(np.flatnonzero(row)))
        expected = [phi.get(s, 0.0) for s in range(len(row))]
        np.testing.assert_allclose(e.word_relevance[i], expected, rtol=1e-9, atol=1e-12)
    assert e.word_relevance[1, 0] == 0


def test_shapley_sampling_equals_the_loop_over_the_same_permutations_and_is_efficient(text_model):
    model, emb, score = text_model
    samples, seed = 5, 7
    e = explain(model, IDS, method="shapley", method_options={"samples": samples, "seed": seed}, dtype="float64")
    # the documented draw: `samples` permutations of the step positions, the unmasked steps in their order
    rng = np.random.default_rng(seed)
    orders = [rng.permutation(IDS.shape[1]) for _ in range(samples)]
    for i, row in enumerate(IDS):
        v, mask, t = _vectors(emb, row[None]), (row != 0)[None], e.target[i:i + 1]
        phi = np.zeros(len(row))
        for order in orders:
            current = np.zeros_like(v)
            before = score(current, mask, t)[0]
            for s in (s for s in order if row[s] != 0):
                current[0, s] = v[0, s]
                after = score(current, mask, t)[0]
                phi[s] += (after - before) / samples
                before = after
        np.testing.assert_allclose(e.word_relevance[i], phi, rtol=1e-9, atol=1e-12)
    # efficiency: every permutation's gains add up to f(x) - f(baseline)
    np.testing.assert_allclose(e.convergence_delta, 0, atol=1e-12 * np.abs(e.explained_score).max())
    assert np.abs(e.word_relevance).sum() > 0


def _sampled_shapley(f, players, orders):
    """Mean marginal contributions over ``orders`` (permutations of every position; the players in
    their order), one plain loop per order: f(frozenset of players) -> score."""
    phi = dict.fromkeys(players, 0.0)
    for order in orders:
        coalition = frozenset()
        for q in (q for q in order if q in phi):
            phi[q] += (f(coalition | {q}) - f(coalition)) / len(orders)
            coalition = coalition | {q}
    return phi


@pytest.mark.parametrize("samples", ["all", 4])
def test_shapley_evaluates_each_chain_end_once_and_stays_exact(samples):
    """Baseline.run on a counting toy score (not additive in the steps): per sample, f(x), f(x') and
    each permutation's coalitions of 1..P-1 players, m (P - 1) + 2 rows; the values equal the plain
    loops (exact Shapley for "all", the same permutations when sampled), with masked steps (a sample
    with fewer players than P) and efficiency f(x) - f(x') per sample."""
    from keras import ops

    from keras_lrp.baselines import make_baseline

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 2))
    active = np.array([[1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1]], dtype="float64")
    w = rng.standard_normal((4, 2))
    rows = []

    def toy(v):      # (rows, T, D) -> (rows,)
        z = np.einsum("rtd,td->rt", v, w) if isinstance(v, np.ndarray) else ops.einsum("rtd,td->rt", v, w)
        first, rest = z[:, 0], z[:, 1:]
        return (np.tanh if isinstance(v, np.ndarray) else ops.tanh)(first + 2 * rest[:, 0]) * rest[:, 1] \
            + rest[:, 2] ** 2

    def score(xs, starts, target, timestep):
        rows.append(int(ops.shape(starts[0])[0]))
        f = toy(starts[0])
        return f, (f[:, None], ops.zeros_like(target), timestep, f[:, None])

    baseline = make_baseline("shapley", {"samples": samples, "seed": 5}, 1, "float64")
    plan = baseline.plan(4)
    relevance, _, _, f_ref, _, _ = baseline.run([None], [ops.convert_to_tensor(x)], [ops.convert_to_tensor(active)],
                                                score, None, ops.zeros(3, "int32"), ops.zeros(3, "int32"), *plan)
    value = ops.convert_to_numpy(ops.sum(relevance[0], axis=-1))     # (3, 4)
    assert sum(rows) == 3 * baseline.rows_per_sample(4) == 3 * (len(plan[0]) * 3 + 2)
    for i in range(3):
        players = list(np.flatnonzero(active[i]))

        def f(coalition):
            kept = np.where(np.isin(np.arange(4), [p for p in players if p not in coalition])[:, None], 0.0, x[i])
            return toy(kept[None])[0]

        phi = _exact_shapley(f, players) if samples == "all" else _sampled_shapley(f, players, plan[0])
        np.testing.assert_allclose(value[i], [phi.get(t, 0.0) for t in range(4)], rtol=1e-9, atol=1e-12)
        assert abs(value[i].sum() - (f(frozenset(players)) - f(frozenset()))) <= 1e-12 * np.abs(value[i]).sum()
        assert abs(ops.convert_to_numpy(f_ref)[i] - f(frozenset())) <= 1e-12


def test_integrated_gradients_equals_the_loop_and_completeness_improves_with_steps(text_model):
    model, emb, score = text_model
    e = explain(model, IDS, method="ig", method_options={"steps": 16}, dtype="float64")
    head_model_target = e.target
    for i, row in enumerate(IDS):
        v, mask = _vectors(emb, row[None]), (row != 0)[None]
        grads = np.zeros_like(v)
        for k in range(16):
            point = tf.Variable((k + 0.5) / 16 * v)
            with tf.GradientTape() as tape:
                out = model.layers[-1](model.layers[-2](point, mask=tf.constant(mask)))[0, head_model_target[i]]
            grads += tape.gradient(out, point).numpy() / 16
        expected = v * grads * mask[..., None]
        np.testing.assert_allclose(e.relevance[i], expected[0], rtol=1e-7, atol=1e-12)
    gaps = [np.abs(explain(model, IDS, method="ig", method_options={"steps": s}, dtype="float64")
                   .convergence_delta).max() for s in (2, 8, 32, 128)]
    # the midpoint rule: the gap falls ~ 1 / steps^2 on this smooth model
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3]
    assert gaps[3] < 1e-3 * np.abs(e.explained_score - e.rest).max()


@pytest.mark.parametrize("method", ["ig", "occlusion", "shapley"])
def test_two_input_model_perturbs_both_inputs_steps(method):
    """Token ids and a float series, concatenated per step, into a GRU: the players are the steps of both."""
    keras.utils.set_random_seed(5)
    ids = keras.Input((None,), dtype="int32", name="ids")
    series = keras.Input((None, 2), name="series")
    emb = keras.layers.Embedding(9, 2, dtype="float64")
    rnn = keras.layers.GRU(3, dtype="float64")
    head = keras.layers.Dense(2, dtype="float64")
    model = keras.Model([ids, series], head(rnn(keras.layers.Concatenate(dtype="float64")([emb(ids), series]))))
    x_ids = np.array([[1, 2], [3, 8]])
    x_series = np.random.default_rng(0).standard_normal((2, 2, 2))
    e = explain(model, [x_ids, x_series], method=method, dtype="float64",
                method_options={"samples": "all"} if method == "shapley" else None)
    w_ids, w_series = e.word_relevance
    for i in range(2):
        t = e.target[i]
        v_ids, v_series = emb.embeddings.numpy()[x_ids[i]], x_series[i]

        def f(keep_ids, keep_series):
            a = np.where(np.asarray(keep_ids)[:, None], v_ids, 0.0)
            b = np.where(np.asarray(keep_series)[:, None], v_series, 0.0)
            return head(rnn(np.concatenate([a, b], axis=-1)[None])).numpy()[0, t]

        if method == "occlusion":
            expected = [f(*k) for k in (([1, 1], [1, 1]),)] * 4
            one_out = (([0, 1], [1, 1]), ([1, 0], [1, 1]), ([1, 1], [0, 1]), ([1, 1], [1, 0]))
            drops = [expected[0] - f(*k) for k in one_out]
            np.testing.assert_allclose(np.concatenate([w_ids[i], w_series[i]]), drops, rtol=1e-9, atol=1e-12)
        elif method == "shapley":
            phi = _exact_shapley(lambda c: f([p in c for p in (0, 1)], [p in c for p in (2, 3)]), [0, 1, 2, 3])
            np.testing.assert_allclose(np.concatenate([w_ids[i], w_series[i]]), [phi[p] for p in range(4)],
                                       rtol=1e-9, atol=1e-12)
    scale = np.abs(e.explained_score - e.rest).max()
    tolerance = 0.05 * scale if method == "ig" else (1e-12 * scale if method == "shapley" else None)
    if tolerance is not None:
        np.testing.assert_allclose(e.convergence_delta, 0, atol=tolerance)


def test_given_baseline_vector_and_masking_time_series():
    """A float series with Masking: masked steps are never perturbed (the baseline would unmask them)
    and get 0; a given baseline vector is where the perturbed steps go."""
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((None, 2)), keras.layers.Masking(mask_value=-1.0),
                              keras.layers.LSTM(3), keras.layers.Dense(1)])
    x = np.random.default_rng(1).standard_normal((2, 4, 2))
    x[0, :2] = -1.0       # masked steps
    base = np.array([0.5, -0.25])
    e = explain(model, x, method="occlusion", method_options={"baseline": base}, dtype="float64")
    assert np.all(e.word_relevance[0, :2] == 0)
    f = lambda z: float(model(z[None].astype("float32")).numpy()[0, 0])   # noqa: E731  (model in float32)
    for t in (2, 3):
        occluded = x[0].copy()
        occluded[t] = base
        assert abs(e.word_relevance[0, t] - (f(x[0]) - f(occluded))) < 1e-4
    everything = x[0].copy()
    everything[2:] = base
    assert abs(e.rest[0] - f(everything)) < 1e-4
    ig = explain(model, x, method="ig", method_options={"baseline": base, "steps": 64}, dtype="float64")
    assert np.all(ig.relevance[0, :2] == 0)
    np.testing.assert_allclose(ig.rest, e.rest, rtol=1e-9, atol=1e-12)
    assert np.abs(ig.convergence_delta).max() < 1e-2 * np.abs(ig.explained_score - ig.rest).max()


def test_explainer_class_text_and_json_round_trip(text_model, tmp_path):
    model, _, _ = text_model
    explainer = keras_lrp.Explainer(model, method="shapley", method_options={"samples": 3, "seed": 1}, dtype="float64")
    e = explainer.attribute(IDS)
    assert e.method == "shapley"
    np.testing.assert_array_equal(e.word_relevance, explain(model, IDS, method="shapley", dtype="float64",
                                                            method_options={"samples": 3, "seed": 1}).word_relevance)
    other_seed = explain(model, IDS, method="shapley", dtype="float64", method_options={"samples": 3, "seed": 2})
    assert not np.array_equal(e.word_relevance, other_seed.word_relevance)
    e.save(tmp_path / "e.json")
    back = Explanation.load(tmp_path / "e.json")
    assert back.method == "shapley"
    np.testing.assert_allclose(back.convergence_delta, e.convergence_delta, atol=1e-12)
    # one row at a time gives the same as the batch
    np.testing.assert_allclose(explainer.attribute(IDS[1:2]).relevance[0], e.relevance[1], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("options, method, message", [
    ({"step": 4}, "ig", "unknown: ['step']"),
    ({"steps": 0}, "ig", "steps must be a positive integer"),
    ({"window": 2.5}, "occlusion", "window must be a positive integer"),
    ({"samples": "many"}, "shapley", "samples (or 'all') must be a positive integer"),
    ({"seed": -1}, "shapley", "seed must be an integer >= 0"),
    ({"baseline": "zero"}, "ig", "baseline must be None, a number or a numeric array"),
    ({"baseline": [np.nan, 0, 0]}, "occlusion", "NaN or inf"),
    ({"baseline": np.zeros(4)}, "ig", "does not broadcast"),
    ({"samples": "all"}, "shapley", "9! permutations"),
    ({"samples": 300_000}, "shapley", "Use a smaller samples"),
    ({"steps": 4}, "lrp", "method_options are for the methods"),
    ("steps=4", "ig", "method_options must be a dict"),
])
def test_bad_options_are_refused_clearly(text_model, options, method, message):
    model, _, _ = text_model
    with pytest.raises((ValueError, TypeError)) as err:
        explain(model, np.ones((1, 9), int), method=method, method_options=options)
    assert message in str(err.value)


def test_cli_methods(tmp_path, capsys):
    from keras_lrp import cli
    from keras_lrp.text import Vocabulary

    words = "i love the movie plot".split()
    Vocabulary(words).save(tmp_path / "vocab.json")
    keras.utils.set_random_seed(0)
    keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(len(words) + 2, 4, mask_zero=True),
                      keras.layers.LSTM(3), keras.layers.Dense(2)]).save(tmp_path / "m.keras")
    for method in ("ig", "occlusion", "shapley"):
        code = cli.main(["explain", "i love the movie", "--model", str(tmp_path / "m.keras"), "--vocab",
                         str(tmp_path / "vocab.json"), "--method", method, "--json", str(tmp_path / f"{method}.jsonl")])
        assert code == 0, capsys.readouterr().err
        assert f'"method": "{method}"' in (tmp_path / f"{method}.jsonl").read_text()


def test_sequence_output_explains_the_chosen_step():
    """A tagger (output per step): occlusion and Shapley explain the output at ``timestep``; later steps
    cannot change it (a forward LSTM) and get 0."""
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((None, 2), dtype="float64"),
                              keras.layers.LSTM(3, return_sequences=True, dtype="float64"),
                              keras.layers.Dense(2, dtype="float64")])
    x = np.random.default_rng(2).standard_normal((2, 4, 2))
    e = explain(model, x, target=1, timestep=2, method="occlusion", dtype="float64")
    for i in range(2):
        full = model(x[i:i + 1]).numpy()[0, 2, 1]
        for t in range(4):
            occluded = x[i:i + 1].copy()
            occluded[0, t] = 0.0
            expected = full - model(occluded).numpy()[0, 2, 1]
            assert abs(e.word_relevance[i, t] - expected) <= 1e-9 * abs(full) + 1e-12
        assert abs(e.word_relevance[i, 3]) <= 1e-12 * abs(full)
    s = explain(model, x, target=1, timestep=-2, method="shapley", method_options={"samples": "all"}, dtype="float64")
    np.testing.assert_array_equal(s.timestep, [2, 2])
    np.testing.assert_allclose(s.convergence_delta, 0, atol=1e-12)
    assert np.all(np.abs(s.word_relevance[:, 3]) <= 1e-12)


def test_explain_text_passes_method_options(text_model):
    from keras_lrp import explain_text
    from keras_lrp.text import Vocabulary

    model, _, _ = text_model
    vocab = Vocabulary("a b c d e f g h i j".split())
    one = explain_text(model, ["a b c"], vocab=vocab, method="shapley", method_options={"samples": 2, "seed": 3})
    other = explain_text(model, ["a b c"], vocab=vocab, method="shapley", method_options={"samples": 2, "seed": 4})
    assert one.method == "shapley" and one.word_relevance.shape == (1, 3)
    assert not np.array_equal(one.word_relevance, other.word_relevance)


def test_ray_corpus_path_runs_the_baselines(tmp_path):
    """explain_corpus (Ray Data actors) with method="shapley" gives what explain gives in process."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    import json

    from keras_lrp.distributed import explain_corpus

    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(4), keras.layers.Dense(2)])
    model.save(tmp_path / "series.keras")
    x = np.random.default_rng(3).standard_normal((10, 5, 3))
    np.save(tmp_path / "x.npy", x)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="warning")
    try:
        result = explain_corpus(tmp_path / "series.keras", tmp_path / "x.npy", tmp_path / "out", num_workers=1,
                                shard_size=4, method="shapley", dtype="float64")
    finally:
        ray.shutdown()
    records = [json.loads(line) for line in open(result.path, encoding="utf-8")]
    e = explain(keras_lrp.load_model(tmp_path / "series.keras"), x, method="shapley", dtype="float64")
    assert [r["index"] for r in records] == list(range(10))
    np.testing.assert_allclose(np.asarray([r["relevance"] for r in records]), e.word_relevance, rtol=1e-10, atol=1e-14)


def test_subclassed_model_and_the_cache_key():
    """A subclassed model (no model.inputs) is explained; equal options by content reuse the explainer,
    other options do not."""
    from keras_lrp import explainer as module

    class Tiny(keras.Model):
        def __init__(self):
            super().__init__()
            self.rnn = keras.layers.GRU(3)
            self.head = keras.layers.Dense(2)

        def call(self, x):
            return self.head(self.rnn(x))

    keras.utils.set_random_seed(0)
    model = Tiny()
    x = np.random.default_rng(0).standard_normal((2, 3, 2))
    model(x)
    e = explain(model, x, method="occlusion", method_options={"baseline": np.zeros(2)}, dtype="float64")
    assert e.word_relevance.shape == (2, 3)
    cached = len(module._CACHE)
    explain(model, x, method="occlusion", method_options={"baseline": np.zeros(2)}, dtype="float64")
    assert len(module._CACHE) == cached
    explain(model, x, method="occlusion", method_options={"baseline": np.ones(2)}, dtype="float64")
    assert len(module._CACHE) == min(cached + 1, module._CACHE_SIZE)
