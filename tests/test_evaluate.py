"""Word deletion and the toy task (keras_lrp.experiments) on tiny models made here."""
import argparse
import json
import os

import keras
import numpy as np
import pytest

from keras_lrp import experiments as ev
from keras_lrp.experiments.evaluate import EvaluateArgumentError, add_evaluate_parser, run_evaluate
from keras_lrp.experiments.toy import TOY_OPERATIONS, make_toy_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D, V = 4, 20


# ----------------------------------------------------------------------------- order and masks

def test_deletion_order_descending_ascending_and_ties():
    r = np.array([[0.1, 3.0, -2.0, 3.0], [0.1, 3.0, -2.0, 3.0]])
    order = ev.deletion_order(r, [True, False])
    assert order[0].tolist() == [1, 3, 0, 2]          # most relevant first; the tie 3.0 by position
    assert order[1].tolist() == [2, 0, 1, 3]          # least relevant first
    assert ev.deletion_order(r, False).tolist() == [[2, 0, 1, 3]] * 2


def test_deletion_order_nan_ranks_like_zero_and_inf_first():
    r = np.array([[np.nan, 1.0, -1.0, np.inf]])
    assert ev.deletion_order(r, True).tolist() == [[3, 1, 0, 2]]


def test_deletion_masks_count_and_saturate():
    order = np.array([[2, 0, 1], [1, 2, 0]])
    m = ev.deletion_masks(order, 5)
    assert m.shape == (6, 2, 3)
    assert m.sum(axis=2).tolist() == [[0, 0], [1, 1], [2, 2], [3, 3], [3, 3], [3, 3]]
    assert m[1, 0].tolist() == [False, False, True] and m[2, 0].tolist() == [True, False, True]
    assert m[1, 1].tolist() == [False, True, False] and m[2, 1].tolist() == [False, True, True]


# ----------------------------------------------------------------------------- a linear oracle

@pytest.fixture(scope="module")
def linear():
    """Average of the word vectors -> Dense(2) with w_1 = -w_0: the margin of the true class y is
    sum_t (w_y . x_t) / T, so c_t = w_y . x_t is each word's exact contribution (the oracle)."""
    rng = np.random.default_rng(3)
    model = keras.Sequential([keras.Input((None, D)), keras.layers.GlobalAveragePooling1D(),
                              keras.layers.Dense(2, use_bias=False)])
    w = rng.standard_normal(D).astype("float32")
    model.layers[-1].set_weights([np.stack([w, -w], axis=1)])
    emb = rng.standard_normal((V, D)).astype("float32")
    sents = [rng.integers(2, V, size=int(rng.integers(1, 8))) for _ in range(120)]
    labels = rng.integers(0, 2, size=len(sents))
    w_class = np.stack([w, -w]).astype(np.float64)                      # (classes, D)

    def oracle(x, target):
        return np.einsum("btd,bd->bt", x.astype(np.float64), w_class[target])

    return model, emb, sents, labels, w_class, oracle


def brute_force_curve(emb, sents, labels, w_class, order_key, k_max):
    """Accuracy after k deletions, computed one sentence and one k at a time (no batching)."""
    hits = np.zeros((2, k_max + 1))
    n = np.zeros(2)
    for ids, y in zip(sents, labels):
        c = emb[ids].astype(np.float64) @ w_class[y]                     # contribution of each word to class y
        pred0 = 0 if c.sum() * (1 if y == 0 else -1) >= 0 else 1         # logit_0 >= logit_1 -> class 0
        correct = pred0 == y
        order = order_key(c, correct)
        n[0 if correct else 1] += 1
        for k in range(k_max + 1):
            keep = np.ones(len(ids), bool)
            keep[order[:k]] = False
            s = c[keep].sum() * (1 if y == 0 else -1)                    # = w_0 . sum of kept x
            pred = 0 if s >= 0 else 1
            hits[0 if correct else 1, k] += pred == y
    return hits[0] / n[0], hits[1] / n[1], int(n[0]), int(n[1])


def oracle_order(c, correct):
    return np.argsort(-c if correct else c, kind="stable")


@pytest.fixture(scope="module")
def linear_result(linear):
    model, emb, sents, labels, _, oracle = linear
    return ev.word_deletion(model, sents, labels, embeddings=emb, methods=["lrp", "gi", "sa", "random"],
                            extra_methods={"oracle": oracle}, max_deletions=8, batch_size=7, eps=0.0)


def test_word_deletion_matches_brute_force_oracle(linear, linear_result):
    _, emb, sents, labels, w_class, _ = linear
    correct, wrong, n_c, n_w = brute_force_curve(emb, sents, labels, w_class, oracle_order, 8)
    r = linear_result
    assert (r.n_correct, r.n_misclassified) == (n_c, n_w) and n_c > 20 and n_w > 20
    np.testing.assert_array_equal(r.correct["oracle"], correct)
    np.testing.assert_array_equal(r.misclassified["oracle"], wrong)
    assert r.correct["oracle"][0] == 1.0 and r.misclassified["oracle"][0] == 0.0
    # Deleting all words (k >= every length, 7) leaves the zero input: logits tie, class 0 wins.
    assert r.correct["oracle"][-1] == r.correct["oracle"][-2]


def test_lrp_and_gi_equal_the_oracle_on_a_linear_model(linear_result):
    r = linear_result
    for m in ("lrp", "gi"):
        np.testing.assert_array_equal(r.correct[m], r.correct["oracle"])
        np.testing.assert_array_equal(r.misclassified[m], r.misclassified["oracle"])


def test_sa_on_a_linear_model_deletes_by_position(linear, linear_result):
    # The gradient is the same for every word: all SA relevances tie, ties go by position.
    _, emb, sents, labels, w_class, _ = linear
    correct, wrong, _, _ = brute_force_curve(emb, sents, labels, w_class, lambda c, ok: np.arange(len(c)), 8)
    np.testing.assert_array_equal(linear_result.correct["sa"], correct)
    np.testing.assert_array_equal(linear_result.misclassified["sa"], wrong)


def test_oracle_is_the_best_possible_order(linear_result):
    # Deleting the k largest contributions minimises the margin after k deletions, for every k:
    # no order (random included) can end with a lower accuracy on correct sentences.
    r = linear_result
    assert np.all(r.correct["oracle"] <= r.correct["random"])
    assert np.all(r.misclassified["oracle"] >= r.misclassified["random"])
    assert r.correct["oracle"][2] < r.correct["random"][2] - 0.1
    # The oracle curve falls monotonically over the first deletions.
    assert np.all(np.diff(r.correct["oracle"][:4]) <= 0)


def test_random_baseline_is_seeded_and_batch_independent(linear, linear_result):
    model, emb, sents, labels, _, _ = linear
    again = ev.word_deletion(model, sents, labels, embeddings=emb, methods=["random"], max_deletions=8,
                             batch_size=64, seed=0)
    np.testing.assert_array_equal(again.correct["random"], linear_result.correct["random"])
    np.testing.assert_array_equal(again.misclassified["random"], linear_result.misclassified["random"])
    other = ev.word_deletion(model, sents, labels, embeddings=emb, methods=["random"], max_deletions=8, seed=1)
    assert not np.array_equal(other.correct["random"], again.correct["random"])


def test_result_table_plot_and_json(linear_result, tmp_path):
    r = linear_result
    table = r.table()
    assert "| LRP (all) | 100.0 |" in table and "| oracle | 100.0 |" in table
    assert f"(n = {r.n_correct})" in table and f"(n = {r.n_misclassified})" in table
    d = json.loads(json.dumps(r.to_dict()))
    assert d["correct"]["lrp"] == r.correct["lrp"].tolist() and d["settings"]["replacement"] == "zero"
    from keras_lrp.visualize import save_png
    path = save_png(r.plot(title="t"), tmp_path / "wd.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- token models

@pytest.fixture(scope="module")
def token_model():
    """Embedding(mask_zero) (1-dim) -> average -> Dense(2): a word's score is its embedding value;
    class 1 wins when the average is > 0. Real words are -1 (class 0); the unknown token is +50."""
    model = keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(V, 1, mask_zero=True),
                              keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(2, use_bias=False)])
    table = -np.ones((V, 1), "float32")
    table[1] = 50.0
    model.layers[0].set_weights([table])
    model.layers[-1].set_weights([np.array([[-1.0, 1.0]], "float32")])
    rng = np.random.default_rng(0)
    sents = [rng.integers(2, V, size=int(rng.integers(2, 6))) for _ in range(12)]
    return model, sents, np.zeros(len(sents), np.int64)


def test_token_model_unknown_replacement(token_model):
    model, sents, labels = token_model
    r = ev.word_deletion(model, sents, labels, methods=["random"], max_deletions=2)
    assert r.settings["replacement"] == "unk" and r.n_correct == len(sents)
    # One unknown token (+50) outweighs up to five -1 words: every sentence flips at once.
    assert r.correct["random"].tolist() == [1.0, 0.0, 0.0]


def test_token_model_pad_replacement_masks_the_word(token_model):
    model, sents, labels = token_model
    r = ev.word_deletion(model, sents, labels, methods=["random"], max_deletions=2, replacement="pad")
    # Masked words are left out of the average: the rest still says class 0 (2+ words per sentence,
    # and a fully masked sentence averages to 0, a tie that argmax gives to class 0).
    assert r.correct["random"].tolist() == [1.0, 1.0, 1.0]


# ----------------------------------------------------------------------------- errors (before any work)

def test_errors(linear, token_model):
    model, emb, sents, labels, _, _ = linear
    tmodel, tsents, tlabels = token_model
    cases = [
        (lambda: ev.word_deletion(model, sents, labels, embeddings=emb, methods=["lrp", "bogus"]), "unknown method"),
        (lambda: ev.word_deletion(model, sents, labels), "pass embeddings="),
        (lambda: ev.word_deletion(tmodel, tsents, tlabels, embeddings=emb), "do not pass embeddings"),
        (lambda: ev.word_deletion(tmodel, tsents, tlabels, replacement="zero"), "replacement='zero'"),
        (lambda: ev.word_deletion(model, sents, labels + 5, embeddings=emb), "labels must be classes"),
        (lambda: ev.word_deletion(model, sents[:3] + [[]], labels[:4], embeddings=emb), "sentence 3"),
        (lambda: ev.word_deletion(model, [[0, V]], [0], embeddings=emb), "outside 0..19"),
        (lambda: ev.word_deletion(model, sents, labels[:3], embeddings=emb), "one integer class per sentence"),
        (lambda: ev.word_deletion(model, sents, labels, embeddings=emb[:, :2]), "embeddings must be"),
        (lambda: ev.word_deletion(model, sents, labels, embeddings=emb, max_deletions=-1), "max_deletions"),
        (lambda: ev.word_deletion(model, sents, labels, embeddings=emb, replacement="blank"), "replacement must"),
        (lambda: ev.word_deletion(model, sents, labels, embeddings=emb, unk_id=V), "unk_id"),
        (lambda: ev.word_deletion(model, sents, labels, embeddings=emb, methods=["lrp"],
                                  extra_methods={"lrp": lambda x, t: x}), "extra_methods"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            call()


# ----------------------------------------------------------------------------- toy task

@pytest.mark.parametrize("operation", TOY_OPERATIONS)
def test_toy_data(operation):
    d = make_toy_data(500, length=7, operation=operation, seed=4)
    assert d.x.shape == (500, 7, 3) and d.x.dtype == np.float32 and len(d) == 500
    assert np.all(d.positions[:, 0] < d.positions[:, 1])
    rows = np.arange(500)
    # Exactly one first marker and one second marker per sequence, at the recorded positions.
    np.testing.assert_array_equal(d.x[:, :, 1].sum(1), 1)
    np.testing.assert_array_equal(d.x[:, :, 2].sum(1), 1)
    assert np.all(d.x[rows, d.positions[:, 0], 1] == 1) and np.all(d.x[rows, d.positions[:, 1], 2] == 1)
    np.testing.assert_array_equal(d.values[:, 0], d.x[rows, d.positions[:, 0], 0])
    sign = 1 if operation == "add" else -1
    np.testing.assert_allclose(d.y, d.values[:, 0] + sign * d.values[:, 1], rtol=1e-6)
    np.testing.assert_allclose(d.contributions.sum(1), d.y, rtol=1e-6)
    assert d.x[:, :, 0].min() >= -1 and d.x[:, :, 0].max() <= 1 and d.x[:, :, 0].std() > 0.5
    # Every pair of positions occurs (uniform over pairs): 21 pairs for length 7.
    assert len({tuple(p) for p in d.positions}) == 21
    np.testing.assert_array_equal(make_toy_data(500, 7, operation, seed=4).x, d.x)
    assert not np.array_equal(make_toy_data(500, 7, operation, seed=5).x, d.x)


def test_toy_data_errors():
    for kwargs, message in [(dict(n=0), "n must"), (dict(n=5, length=1), "length must"),
                            (dict(n=5, operation="mul"), "operation must"), (dict(n=5, low=1, high=1), "low < high")]:
        with pytest.raises(ValueError, match=message):
            make_toy_data(**kwargs)


def test_marked_input_metrics_on_hand_made_relevance():
    d = make_toy_data(400, length=8, seed=1)
    rows = np.arange(400)
    ideal = np.zeros((400, 8))
    ideal[rows, d.positions[:, 0]] = d.contributions[:, 0]
    ideal[rows, d.positions[:, 1]] = d.contributions[:, 1]
    m = ev.marked_input_metrics(ideal, d.positions, d.contributions)
    assert m["top2_accuracy"] == 1.0 and m["marked_share"] == 1.0 and m["nonfinite"] == 0.0
    assert m["corr_first"] == pytest.approx(1.0) and m["corr_second"] == pytest.approx(1.0)
    # A distractor larger than both marked values in the first half of the samples.
    spoiled = ideal.copy()
    free = [next(t for t in range(8) if t not in p) for p in d.positions]
    spoiled[rows[:200], np.array(free[:200])] = 5.0
    m = ev.marked_input_metrics(spoiled, d.positions, d.contributions)
    assert m["top2_accuracy"] == 0.5
    share = (np.abs(ideal[:200]).sum(1) / (np.abs(ideal[:200]).sum(1) + 5)).mean() / 2 + 0.5
    assert m["marked_share"] == pytest.approx(share)
    # Relevance of the wrong sign; relevance as (n, time, features) is summed over features.
    m = ev.marked_input_metrics(np.stack([-ideal, 0 * ideal], -1), d.positions, d.contributions)
    assert m["corr_first"] == pytest.approx(-1.0) and m["top2_accuracy"] == 1.0
    bad = ideal.copy()
    bad[0, d.positions[0, 0]] = np.nan
    m = ev.marked_input_metrics(bad, d.positions, d.contributions)
    assert m["nonfinite"] == 1 / 400 and np.isnan(m["corr_first"]) and m["corr_second"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="positions"):
        ev.marked_input_metrics(ideal, d.positions[:5], d.contributions)


def test_toy_evaluation_plumbing_on_an_untrained_model(tmp_path):
    from keras_lrp.experiments.toy import build_toy_model
    d = make_toy_data(300, length=10, seed=2)
    model = build_toy_model(units=4, seed=0)
    r = ev.toy_evaluation(model, d, methods=["lrp", "random", "lrp_half"], seed=3)
    assert set(r.metrics) == {"lrp", "random", "lrp_half"} and r.relevance["lrp"].shape == (300, 10)
    # The random baseline finds both marked positions about 1 time in C(10, 2) = 45.
    assert r.metrics["random"]["top2_accuracy"] < 0.08
    again = ev.toy_evaluation(model, d, methods=["random"], seed=3)
    assert again.metrics["random"] == r.metrics["random"]
    assert "| LRP (all) |" in r.table() and r.mse > 0
    from keras_lrp.visualize import save_png
    assert save_png(r.plot(), tmp_path / "toy.png").stat().st_size > 1000


# ----------------------------------------------------------------------------- command line

def _args(*argv):
    parser = argparse.ArgumentParser()
    add_evaluate_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["evaluate", *argv])


def test_cli_toy(tmp_path, capsys):
    out = tmp_path / "out"
    code = run_evaluate(_args("--toy", "--n-train", "256", "--n-test", "64", "--epochs", "1", "--units", "4",
                                 "--methods", "lrp,random", "--quiet", "--out-dir", str(out)))
    assert code == 0
    printed = capsys.readouterr().out
    assert "| LRP (all) |" in printed and "| random |" in printed
    assert sorted(p.name for p in out.iterdir()) == ["toy_add.json", "toy_add.md", "toy_add.png"]
    assert json.loads((out / "toy_add.json").read_text())["n"] == 64


def test_cli_toy_outputs_replace_symlinks(tmp_path, capsys):
    """--out-dir files are created fresh: a symlink planted at one is replaced, its target untouched."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("toy_add.json", "toy_add.md", "toy_add.png"):
        (tmp_path / f"victim_{name}").write_text("secret")
        os.symlink(tmp_path / f"victim_{name}", out / name)
    code = run_evaluate(_args("--toy", "--n-train", "64", "--n-test", "16", "--epochs", "1", "--units", "2",
                              "--methods", "random", "--quiet", "--out-dir", str(out)))
    assert code == 0
    for name in ("toy_add.json", "toy_add.md", "toy_add.png"):
        assert (tmp_path / f"victim_{name}").read_text() == "secret" and not (out / name).is_symlink(), name


def test_cli_errors_before_work(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for argv, message in ((["--methods", "lrp,foo"], "unknown method"), (["--max-sentences", "0"], "must be >= 1"),
                          (["--eps", "-1"], "must be >= 0"), (["--batch-size", "x"], "expected an integer")):
        with pytest.raises(SystemExit) as exit_:
            _args(*argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err, argv
    with pytest.raises(EvaluateArgumentError, match="not a folder"):
        run_evaluate(_args("--out-dir", str(tmp_path / "file")))
    with pytest.raises(EvaluateArgumentError, match="--data"):
        run_evaluate(_args("--data", str(tmp_path / "missing.txt")))
    # a Namespace not made by argparse is checked too
    args = _args()
    args.max_deletions = -1
    with pytest.raises(EvaluateArgumentError, match="--max-deletions"):
        run_evaluate(args)


@pytest.mark.skipif(not os.path.isfile(os.path.join(ROOT, "models", "sst5_bilstm.json")),
                    reason="the shipped SST model is not in models/")
def test_cli_word_deletion_on_the_shipped_model(tmp_path, capsys):
    sst = os.path.join(ROOT, "tests", "data", "sst", "test.txt")
    code = run_evaluate(_args("--data", sst, "--max-sentences", "24", "--max-deletions", "2",
                                 "--methods", "lrp,random", "--quiet", "--out-dir", str(tmp_path)))
    assert code == 0
    printed = capsys.readouterr().out
    assert "model accuracy on the 24 sentences" in printed and "| LRP (all) | 100.0 |" in printed
    d = json.loads((tmp_path / "word_deletion_sst5.json").read_text())
    assert d["n_correct"] + d["n_misclassified"] == 24 and len(d["correct"]["lrp"]) == 3


def test_aopc_and_deletion_insertion_auc_equal_a_loop_over_sentences(linear, linear_result):
    """AOPC, deletion and insertion AUC of the oracle order, one sentence and one deletion at a time."""
    model, emb, sents, labels, w_class, _ = linear

    def p_true(vectors, y):
        logits = model(vectors[None].astype("float32")).numpy()[0].astype(np.float64)
        e = np.exp(logits - logits.max())
        return (e / e.sum())[y]

    aopc, deletion, insertion = [], [], []
    for ids, y in zip(sents, labels):
        x = emb[ids]
        c = x.astype(np.float64) @ w_class[y]
        order = np.argsort(-c, kind="stable")

        def without(words):
            kept = x.copy()
            kept[list(words)] = 0.0
            return p_true(kept, y)

        aopc.append(np.mean([p_true(x, y) - without(order[:k]) for k in range(9)]))
        q = np.linspace(0, 1, 11)
        counts = np.rint(q * len(ids)).astype(int)
        deletion.append(np.trapezoid([without(order[:k]) for k in counts], q))
        insertion.append(np.trapezoid([without(order[k:]) for k in counts], q))
    r = linear_result
    np.testing.assert_allclose(r.aopc["oracle"], np.mean(aopc), rtol=1e-5)
    np.testing.assert_allclose(r.deletion_auc["oracle"], np.mean(deletion), rtol=1e-5)
    np.testing.assert_allclose(r.insertion_auc["oracle"], np.mean(insertion), rtol=1e-5)
    # the exact contributions beat a random order on all three
    assert r.aopc["oracle"] > r.aopc["random"] and r.deletion_auc["oracle"] < r.deletion_auc["random"]
    assert r.insertion_auc["oracle"] > r.insertion_auc["random"]
    assert r.seconds_per_sentence["lrp"] > 0 and r.seconds_per_sentence["random"] == 0
    assert "| oracle |" in r.table().split("AOPC")[-1]


def test_word_deletion_with_the_baselines_on_a_token_model(token_model):
    model, sents, labels = token_model[:3]
    r = ev.word_deletion(model, sents[:6], labels[:6], methods="lrp,ig,occlusion,shapley,random", max_deletions=2)
    assert set(r.aopc) == {"lrp", "ig", "occlusion", "shapley", "random"}
    assert all(np.isfinite(v) for v in r.insertion_auc.values())
    d = json.loads(json.dumps(r.to_dict()))
    assert d["seconds_per_sentence"]["shapley"] > 0


def test_families_benchmark_tiny(tmp_path):
    """The across-families benchmark end to end, tiny: one family trained on 20 sentences, 6 test sentences."""
    from keras_lrp.experiments.families import run_families

    data = os.path.join(ROOT, "tests", "data", "sst")
    results = run_families(data, tmp_path, families=["cnn"], methods="lrp,occlusion,random", train_sentences=20,
                           epochs=1, emb_dim=8, units=4, max_sentences=6, max_deletions=2, progress=False)
    (r,) = results
    assert r.family == "cnn" and r.metadata["settings"]["architecture"] == "cnn" and r.metadata["settings"]["seed"] == 1234
    assert r.result.n_correct + r.result.n_misclassified == 6
    summary = (tmp_path / "families.md").read_text()
    assert "| occlusion |" in summary and "trained here: seed 1234" in summary
    saved = json.loads((tmp_path / "families_cnn.json").read_text())
    assert set(saved["evaluation"]["aopc"]) == {"lrp", "occlusion", "random"}
    assert (tmp_path / "families.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="families must be among"):
        run_families(data, tmp_path, families=["mlp"])


def test_cli_toy_gru_with_the_baselines(tmp_path, capsys):
    out = tmp_path / "out"
    code = run_evaluate(_args("--toy", "--cell", "gru", "--bidirectional", "--n-train", "128", "--n-test", "16",
                              "--epochs", "1", "--units", "3", "--methods", "lrp,ig,occlusion,shapley", "--quiet",
                              "--out-dir", str(out)))
    assert code == 0
    printed = capsys.readouterr().out
    assert "| IG |" in printed and "| Shapley |" in printed
    saved = json.loads((out / "toy_add_bigru.json").read_text())
    assert saved["settings"]["cell"] == "gru" and saved["n"] == 16
    assert "Bidirectional(GRU(3))" in (out / "toy_add_bigru.md").read_text()
