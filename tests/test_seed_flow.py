"""The seed notebook's LRP cells run verbatim on Keras 3, and reproduce the golden relevances.

``tests/data/seed/cells_11_14.txt`` holds the code of the seed notebook's cells ``In [11]`` to
``In [14]``, copied verbatim. The tests execute that TEXT, unchanged, in a namespace prepared as the
notebook's earlier cells prepare it (cell ``In [6]``'s model, built with ``LRP_LSTMCell``, with the
golden fixture's weights instead of the unavailable pickle; ``data``, ``text_0``, ``text_1`` as
cell ``In [7]`` makes them). The helpers ``lrp_concat``, ``lrp_slice``, ``get_target_activation``
and ``lrp_lstm_batch_parts`` are checked against plain numpy (``tests/oracle.py``).
"""
import re
import sys
import types
from collections import defaultdict

import keras
import numpy as np
import pytest

import oracle
from conftest import GOLDEN_WEIGHT_KEYS, ROOT, data_file, golden_cases

import keras_lrp
from keras_lrp import compat

COMMON_UTILS = ROOT / "common_utils"

# The notebook's cells In [1], In [4], In [5] (sizes) and In [6] on Keras 3: only the imports differ
# (keras.utils.generic_utils is gone); the weights come from the golden fixture, not the pickle.
NOTEBOOK_PRELUDE = """
import keras
from keras.layers import RNN, Dense, Bidirectional
from keras import Model
from keras.utils import CustomObjectScope
import numpy as np
from LRP_utils import LRP_LSTMCell

hid_dim = embd_dim = dim = 60
n_classes = 5
with CustomObjectScope({'LRP_LSTMCell': LRP_LSTMCell}):
    cell = LRP_LSTMCell(60,recurrent_activation='sigmoid',implementation=1)
    x = keras.Input((None,60))
    bi_lstm = Bidirectional(RNN(cell))
    h = bi_lstm(x)
    y= Dense(5)(h)
    model = Model(inputs=[x], outputs=[y])
model.set_weights(golden_weights)
"""

TOL = 1e-8   # max relative error vs the golden relevances (measured: 1.1e-9 eps cases, 4.2e-12 eps = 0)


def seed_cells():
    """{cell number: code} of the fixture."""
    text = data_file("seed/cells_11_14.txt").read_text()
    parts = re.split(r"^In \[(\d+)\]:\n", text, flags=re.M)
    assert parts[0] == "", "the fixture starts with 'In [11]:'"
    return {int(n): code.rstrip("\n") + "\n" for n, code in zip(parts[1::2], parts[2::2])}


def max_rel_err(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


def test_fixture_is_the_notebooks_text_verbatim():
    notebook = data_file("seed/lrp_sentiment_keras2_notebook.txt").read_text()
    cells = seed_cells()
    assert sorted(cells) == [11, 12, 13, 14]
    for n, code in cells.items():
        assert f"In [{n}]:\n{code.rstrip()}" in notebook, f"In [{n}] differs from the notebook"
    assert "lrp_lstm_batch(all_activations, hin," in cells[12]    # the call this test exists for


@pytest.fixture(scope="module")
def notebook(golden):
    """The namespace after the notebook's cells In [1]-In [6], plus a collector for In [14]'s display."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(COMMON_UTILS))
        shown = []
        ipython_display = types.ModuleType("IPython.display")
        ipython_display.HTML = lambda html: html
        ipython_display.display = shown.append
        mp.setitem(sys.modules, "IPython", types.ModuleType("IPython"))
        mp.setitem(sys.modules, "IPython.display", ipython_display)
        ns = {"golden_weights": [golden[k] for k in GOLDEN_WEIGHT_KEYS]}
        exec(compile(NOTEBOOK_PRELUDE, "notebook In [1]-In [6]", "exec"), ns)
        yield ns, shown


def golden_runs(golden):
    """The golden cases as the notebook's two-sentence batches: equal-length cases of one setting
    are paired (sentence 0, sentence 1); a case without a partner is both sentences."""
    groups = defaultdict(list)
    for case in golden_cases(golden):
        name, x = case[0], case[1]
        groups[(name.split("_")[1], x.shape[0])].append(case)
    runs = []
    for (setting, _), cases in sorted(groups.items()):
        for k in range(0, len(cases), 2):
            pair = cases[k:k + 2]
            runs.append((setting, pair[0], pair[-1]))
    return runs


def run_seed_cells(ns, shown, setting, case_0, case_1, dense_kernel):
    """Executes the fixture's cells on the pair; returns the namespace after In [14]."""
    (_, x0, t0, eps, bf, *_), (_, x1, t1, *_) = case_0, case_1
    # The notebook explains class 0 of sentence 0 and class 1 of sentence 1 (In [12]'s Rout_mask);
    # relabel the Dense outputs so that these are the golden targets (a score only depends on its column).
    kernel = dense_kernel.copy()
    kernel[:, 0], kernel[:, 1] = dense_kernel[:, t0], dense_kernel[:, t1]
    ns["model"].layers[-1].set_weights([kernel, np.zeros(5)])
    ns["data"] = np.stack([x0, x1])                                   # In [7]: data = np.vstack(...)
    ns["text_0"] = [f"w{t}" for t in range(x0.shape[0])]
    ns["text_1"] = [f"v{t}" for t in range(x1.shape[0])]
    cells = seed_cells()
    shown.clear()
    exec(compile(cells[11], "In [11]", "exec"), ns)
    if setting == "cons":
        assert (ns["eps"], ns["bias_factor"]) != (eps, bf)
        ns["eps"], ns["bias_factor"] = eps, bf     # the user's edit of In [11]'s two settings
    else:
        assert (ns["eps"], ns["bias_factor"]) == (eps, bf)   # In [11] as written is the paper's setting
    for n in (12, 13, 14):
        exec(compile(cells[n], f"In [{n}]", "exec"), ns)
    return ns


def test_seed_cells_run_verbatim_and_match_golden(golden, notebook, capsys):
    """Cells In [11]-In [14], text unchanged, on the golden model: ``Rx`` (one array, both
    directions) and ``R`` match the reference implementation's relevances for all 48 cases."""
    ns, shown = notebook
    runs = golden_runs(golden)
    assert sum(2 if a is not b else 1 for _, a, b in runs) == 48
    assert any(a is not b for _, a, b in runs)      # real two-sentence batches are among them
    worst = {"eps": 0.0, "cons": 0.0}
    for setting, case_0, case_1 in runs:
        capsys.readouterr()
        run_seed_cells(ns, shown, setting, case_0, case_1, golden["dense_kernel"])
        Rx, R = ns["Rx"], ns["R"]
        assert isinstance(Rx, np.ndarray) and Rx.dtype == np.float64 and Rx.shape == ns["data"].shape
        assert R.shape == ns["data"].shape[:2]
        printed = capsys.readouterr().out
        for row, (name, x, target, eps, bf, scores, relevance, rest) in enumerate((case_0, case_1)):
            # In [12] feeds the float32 model's score hout (not the float64 one) to the eps-rule: its
            # rounding error delta moves every relevance by delta * eps / (|z| (|z| + eps)), relative.
            z, hout = scores[target], ns["hout"][row, row]
            np.testing.assert_allclose(hout, z, rtol=1e-5, atol=1e-6)
            bound = TOL + 2 * abs(hout - z) * eps / (abs(z) * (abs(z) + eps))
            err = max_rel_err(Rx[row], relevance)
            worst[setting] = max(worst[setting], err)
            assert err <= bound, (name, err, bound)
            assert max_rel_err(R[row], relevance.sum(-1)) <= bound, name
        # In [12]'s debug lines, in the seed's format. With eps = 0, bias_factor = 1 the Dense rule
        # conserves, so its "local diff" is only the float32 rounding of the model's own scores hout
        # (the seed printed -2.5e-07), and the bi-LSTM's is what reaches the initial states.
        diffs = dict(re.findall(r"^(\S+) local diff:  (\S+)$", printed, flags=re.M))
        assert set(diffs) == {ns["dense_layer"].name, ns["bi_lstm_layer"].name}, printed
        if setting == "cons":
            exact = [case[5][case[2]] for case in (case_0, case_1)]           # float64 scores
            float32_rounding = ns["hout"][0, 0] + ns["hout"][1, 1] - sum(exact)
            assert abs(float(diffs[ns["dense_layer"].name]) - float32_rounding) <= 1e-12
            rest_total = case_0[7] + case_1[7]
            assert abs(float(diffs[ns["bi_lstm_layer"].name]) - rest_total) <= TOL * max(1.0, *map(abs, exact))
        # In [14] displayed two heatmaps, one per sentence, every word in it.
        assert len(shown) == 2
        for html, words in zip(shown, (ns["text_0"], ns["text_1"])):
            assert all(f">{w}<" in html for w in words)
    print(f"max relative error vs golden: eps cases {worst['eps']:.2e}, eps=0 cases {worst['cons']:.2e}")


def test_seed_cells_keys_and_shapes(golden, notebook):
    """What the notebook text indexes: the all-layers dict keyed by layer name, the seed's keys,
    ``get_target_activation`` returning a list of float64 arrays."""
    ns, shown = notebook
    setting, case_0, case_1 = golden_runs(golden)[0]
    run_seed_cells(ns, shown, setting, case_0, case_1, golden["dense_kernel"])
    T, d = ns["data"].shape[1], 60
    acts = ns["all_activations"]
    assert set(acts) == {ns["bi_lstm_layer"].name, ns["dense_layer"].name}
    lstm_acts = acts[ns["bi_lstm_layer"].name]
    for side in ("Left", "Right"):
        assert lstm_acts[f"gates_pre_{side}"].shape == lstm_acts[f"gates_{side}"].shape == (2, T, 4 * d)
        assert lstm_acts[f"h_{side}"].shape == lstm_acts[f"c_{side}"].shape == (2, T + 1, d)
        assert not lstm_acts[f"h_{side}"][:, T].any() and not lstm_acts[f"c_{side}"][:, T].any()
    np.testing.assert_array_equal(lstm_acts["final"],
                                  np.concatenate([lstm_acts["h_Left"][:, T - 1], lstm_acts["h_Right"][:, T - 1]], -1))
    import LRP_utils                                   # the module the notebook imports from
    for name in LRP_utils.__all__:
        assert getattr(LRP_utils, name) is getattr(keras_lrp, name), name
    dense_out = acts[ns["dense_layer"].name]
    assert isinstance(dense_out, list) and len(dense_out) == 1 and dense_out[0].dtype == np.float64
    np.testing.assert_allclose(dense_out[0], ns["model"].predict(ns["data"], verbose=0), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# The richer helper (both directions and the rest separately) on the golden model


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lrp_lstm_batch_parts_matches_golden_and_conserves(golden, dtype):
    """``lrp_lstm_batch_parts`` on the paper's model (seed layout: RNN(LRP_LSTMCell)), one
    equal-length batch per setting; float64 conservation ``sum + rest == score`` for eps = 0."""
    from keras_lrp import LRP_LSTMCell

    model = keras.Sequential([
        keras.Input((None, 60), dtype=dtype),
        keras.layers.Bidirectional(keras.layers.RNN(
            LRP_LSTMCell(60, recurrent_activation="sigmoid", implementation=1, dtype=dtype), dtype=dtype),
            dtype=dtype),
        keras.layers.Dense(5, use_bias=False, dtype=dtype),
    ])
    model.set_weights([golden[k] for k in GOLDEN_WEIGHT_KEYS[:-1]])
    bilstm, dense = model.layers
    for setting in ("eps", "cons"):
        cases = [c for c in golden_cases(golden) if c[0].endswith(setting) and c[1].shape[0] == 33]
        assert len(cases) == 3
        x = np.stack([c[1] for c in cases])
        targets = np.array([c[2] for c in cases])
        eps, bf = cases[0][3], cases[0][4]
        acts = compat.cache_lstm_forward_activations_batch(bilstm, x, True, 60)
        scores = acts["final"] @ dense.get_weights()[0].astype(np.float64)
        r_out = np.zeros_like(scores)
        r_out[np.arange(3), targets] = scores[np.arange(3), targets]
        r_final = compat.lrp_dense_batch(acts["final"], dense.get_weights()[0], None, scores, r_out, 120,
                                         eps, bf, "dense")
        args = (x, r_final[:, :60], 3, 33, 60, 60, bilstm.get_weights())
        parts = compat.lrp_lstm_batch_parts(acts, *args, True, "bilstm",
                                            Rout_Right_last=r_final[:, 60:], eps=eps, bias_factor=bf)
        Rx, Rx_rev, rest = parts                                   # a named tuple, unpacks as before
        seed_rin = compat.lrp_lstm_batch({"bilstm": acts}, *args, True, "bilstm", r_final[:, 60:], eps, bf)
        np.testing.assert_array_equal(seed_rin, parts.Rx + parts.Rx_rev)
        for row, (name, _, target, _, _, golden_scores, relevance, golden_rest) in enumerate(cases):
            assert max_rel_err(Rx[row] + Rx_rev[row], relevance) <= TOL, name
            assert abs(rest[row] - golden_rest) <= TOL * max(1.0, abs(golden_rest)), name
            if setting == "cons":
                total = Rx[row].sum() + Rx_rev[row].sum() + rest[row]
                assert abs(total - scores[row, target]) <= 1e-8 * abs(scores[row, target]), name


# --------------------------------------------------------------------------------------------
# lrp_concat, lrp_slice, get_target_activation against plain numpy


def test_lrp_concat_splits_relevance_into_the_parts():
    rng = np.random.default_rng(0)
    r_out = rng.standard_normal((2, 5, 9))
    parts = compat.lrp_concat([(2, 5, 3), (2, 5, 2), (2, 5, 4)], -1, r_out, "concat")
    assert [p.shape for p in parts] == [(2, 5, 3), (2, 5, 2), (2, 5, 4)]
    offset = 0
    for p in parts:
        for j in range(p.shape[-1]):
            np.testing.assert_array_equal(p[..., j], r_out[..., offset + j])
        offset += p.shape[-1]
    # concatenation over time; shapes of Keras tensors (batch None) accepted
    a, b = keras.Input((3, 4)), keras.Input((2, 4))
    first, second = compat.lrp_concat([a, b], 1, r_out[:, :, :4], "concat_t")
    np.testing.assert_array_equal(first, r_out[:, :3, :4])
    np.testing.assert_array_equal(second, r_out[:, 3:5, :4])
    with pytest.raises(ValueError, match="add up"):
        compat.lrp_concat([(2, 5, 3), (2, 5, 2)], -1, r_out, "concat")


def test_lrp_slice_routes_relevance_back_to_the_positions(capsys):
    rng = np.random.default_rng(1)
    r_out = rng.standard_normal((2, 4, 3))
    indices = [4, 1, 1]                                  # a repeated feature: its relevance adds up
    r_in = compat.lrp_slice((2, 4, 6), r_out, indices, "slice", debug=True)
    expected = np.zeros((2, 4, 6))
    for b in range(2):
        for t in range(4):
            for k, j in enumerate(indices):
                expected[b, t, j] += r_out[b, t, k]
    np.testing.assert_array_equal(r_in, expected)
    assert capsys.readouterr().out.startswith("slice local diff: ")
    r_in = compat.lrp_slice((None, 4, 6), r_out, slice(1, 6, 2), "slice")   # positions 1, 3, 5
    np.testing.assert_array_equal(r_in[..., [1, 3, 5]], r_out)
    assert not r_in[..., [0, 2, 4]].any()
    with pytest.raises(ValueError, match="out of range"):
        compat.lrp_slice((2, 4, 6), r_out, [0, 1, 6], "slice")
    with pytest.raises(ValueError, match="expected"):
        compat.lrp_slice((2, 4, 6), r_out, [0, 1], "slice")


def test_get_target_activation_on_keras3_tensors():
    rng = np.random.default_rng(2)
    x_in = keras.Input((4, 3))
    d1 = keras.layers.Dense(5, activation="tanh")
    d2 = keras.layers.Dense(2)
    h = d1(x_in)
    y = d2(h)
    model = keras.Model(inputs=[x_in], outputs=[y])
    x = rng.standard_normal((2, 4, 3))
    (w1, b1), (w2, b2) = d1.get_weights(), d2.get_weights()
    h_np = np.tanh(x @ w1 + b1)
    y_np = h_np @ w2 + b2
    # model.input is a one-element list here; the seed fed a bare array to it
    got = compat.get_target_activation(model.input, [d1.output, d2.output], x)
    assert isinstance(got, list) and len(got) == 2 and all(g.dtype == np.float64 for g in got)
    np.testing.assert_allclose(got[0], h_np, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], y_np, rtol=1e-5, atol=1e-6)
    # one layer alone, from its own input tensor (the notebook's dense_layer.input / .output)
    (only,) = compat.get_target_activation(d2.input, d2.output, h_np)
    np.testing.assert_allclose(only, y_np, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="expects"):
        compat.get_target_activation(model.input, y, x[..., :2])
    with pytest.raises(TypeError, match="symbolic tensor"):
        compat.get_target_activation(model, "dense", x)


def test_branched_model_slices_bilstms_concat_against_numpy():
    """The seed's production pattern (``LRP_utils.lrp_viz``): slices of one input feed several
    Bi-LSTMs whose last states are concatenated and read by a Dense layer. The helpers chained
    by hand match the plain-numpy oracle, and conserve relevance in float64."""
    rng = np.random.default_rng(3)
    T, features, units = 5, 6, 3
    slices = [[0, 1, 2, 3], [2, 4, 5]]                    # overlapping: feature 2 feeds both
    inp = keras.Input((T, features), dtype="float64")
    branch_inputs = [keras.layers.Lambda(lambda t, i=i: keras.ops.take(t, i, axis=-1), dtype="float64")(inp)
                     for i in slices]
    bilstms = [keras.layers.Bidirectional(keras.layers.LSTM(units, dtype="float64"), dtype="float64")
               for _ in slices]
    concat = keras.layers.Concatenate(dtype="float64")([b(s) for b, s in zip(bilstms, branch_inputs)])
    dense = keras.layers.Dense(2, dtype="float64")
    model = keras.Model(inp, dense(concat))
    for layer in bilstms + [dense]:
        layer.set_weights([rng.standard_normal(w.shape) * 0.7 for w in layer.get_weights()])
    x = rng.standard_normal((3, T, features))
    target = np.array([0, 1, 1])

    for eps, bf in ((1e-3, 0.0), (0.0, 1.0)):
        # the seed's chain of helpers
        slice_acts = [compat.get_target_activation(model.input, s, x)[0] for s in branch_inputs]
        acts = [compat.cache_lstm_forward_activations_batch(b, a, True, units) for b, a in zip(bilstms, slice_acts)]
        hin = np.concatenate([a["final"] for a in acts], axis=-1)
        (hout,) = compat.get_target_activation(dense.input, dense.output, hin)
        r_out = np.zeros_like(hout)
        r_out[np.arange(3), target] = hout[np.arange(3), target]
        w, b = dense.get_weights()
        r_concat = compat.lrp_dense_batch(hin, w, b, hout, r_out, hin.shape[1], eps, bf, "dense")
        r_parts = compat.lrp_concat([a["final"].shape for a in acts], -1, r_concat, "concat")
        r_input = np.zeros_like(x)
        rest = np.zeros(3)
        for bilstm, a, s_act, r_part, idx in zip(bilstms, acts, slice_acts, r_parts, slices):
            parts = compat.lrp_lstm_batch_parts(a, s_act, r_part[:, :units], 3, T, units, len(idx),
                                                bilstm.get_weights(), True, bilstm.name,
                                                Rout_Right_last=r_part[:, units:], eps=eps, bias_factor=bf)
            r_input += compat.lrp_slice(x.shape, parts.Rx + parts.Rx_rev, idx, "slice")
            rest += parts.rest

        # plain numpy: oracle.eps_rule / lstm_forward / lstm_backward, one sample at a time
        for n in range(3):
            branch_fwd = []
            for bilstm, idx in zip(bilstms, slices):
                k, rk, bb, kb, rkb, bbb = bilstm.get_weights()
                xs = x[n][:, idx]
                branch_fwd.append([(xs, oracle.lstm_forward(xs, k, rk, bb), k, rk, bb),
                                   (xs[::-1], oracle.lstm_forward(xs[::-1], kb, rkb, bbb), kb, rkb, bbb)])
            h_last = np.concatenate([f["h"][T - 1] for br in branch_fwd for (_, f, *_) in br])
            scores = h_last @ w + b
            np.testing.assert_allclose(hout[n], scores, rtol=1e-12)
            r_o = np.zeros(2)
            r_o[target[n]] = scores[target[n]]
            r_h = oracle.eps_rule(h_last, w, b, scores, r_o, h_last.shape[0], eps, bf)
            expected = np.zeros((T, features))
            expected_rest = 0.0
            for br_n, (br, idx) in enumerate(zip(branch_fwd, slices)):
                for dir_n, (xs, f, k, rk, bb) in enumerate(br):
                    off = (2 * br_n + dir_n) * units
                    r_x, r = oracle.lstm_backward(xs, f, k, rk, bb, r_h[off:off + units], eps, bf)
                    r_x = r_x[::-1] if dir_n else r_x
                    for j, feature in enumerate(idx):
                        expected[:, feature] += r_x[:, j]
                    expected_rest += r
            assert max_rel_err(r_input[n], expected) <= 1e-10, (eps, n)
            assert abs(rest[n] - expected_rest) <= 1e-10 * max(1.0, abs(scores[target[n]])), (eps, n)
            if bf == 1.0:   # eps = 0: relevance.sum() + rest == score
                assert abs(r_input[n].sum() + rest[n] - scores[target[n]]) <= 1e-8 * abs(scores[target[n]])


def test_lrp_lstm_batch_errors_name_the_problem(golden, notebook):
    ns, shown = notebook
    bilstm = ns["bi_lstm"]
    x = np.zeros((2, 4, 60))
    acts = compat.cashe_lstm_forward_activations_batch(bilstm, x, bidirectional=True, dim=60)
    r = np.zeros((2, 60))
    with pytest.raises(KeyError, match="keyed by layer name"):
        compat.lrp_lstm_batch({"other": {}}, x, r, 2, 4, 60, 60, bilstm.get_weights(), True, "bilstm", r)
    with pytest.raises(ValueError, match="Rout_Right_last"):
        compat.lrp_lstm_batch({"bilstm": acts}, x, r, 2, 4, 60, 60, bilstm.get_weights(), True, "bilstm")
    with pytest.raises(ValueError, match="hin has shape"):
        compat.lrp_lstm_batch({"bilstm": acts}, x, r, 2, 5, 60, 60, bilstm.get_weights(), True, "bilstm", r)
    with pytest.raises(ValueError, match="bidirectional=True but the layer"):
        compat.cashe_lstm_forward_activations_batch(bilstm.forward_layer, x, bidirectional=True, dim=60)
