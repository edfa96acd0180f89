"""keras_lrp.distributed: a corpus through Ray Data actors, and one batch over several devices.

The Ray tests run on one local Ray instance (2 CPUs) and a tiny model saved as .keras; the engine's
results are compared bit for bit (float64) with the in-process ``keras_lrp.explain``.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import ROOT

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

import keras  # noqa: E402

import keras_lrp  # noqa: E402
from keras_lrp import distributed  # noqa: E402
from keras_lrp.distributed import explain_corpus  # noqa: E402
from keras_lrp.safe_io import read_own_file  # noqa: E402

N, VOCAB, CLASSES, SHARD = 40, 20, 3, 5
SETTINGS = dict(eps=0.0, bias_factor=1.0, dtype="float64")     # conserving, float64


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def token_model(tmp_path_factory):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(VOCAB, 4),
                              keras.layers.LSTM(4), keras.layers.Dense(CLASSES)])
    path = tmp_path_factory.mktemp("model") / "tokens.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def corpus():
    """40 token-id sequences of lengths 1..8, mixed inside every shard."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, VOCAB, int(rng.integers(1, 9))).tolist() for _ in range(N)]


@pytest.fixture(scope="module")
def uninterrupted(ray_instance, token_model, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    result = explain_corpus(token_model, corpus, out, num_workers=2, shard_size=SHARD, batch_size=4, **SETTINGS)
    return result


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_engine_equals_in_process_explain_bit_for_bit(uninterrupted, token_model, corpus):
    assert (uninterrupted.n_sequences, uninterrupted.n_shards) == (N, N // SHARD)
    assert sorted(uninterrupted.computed) == list(range(N // SHARD)) and uninterrupted.reused == []
    records = read(uninterrupted.path)
    assert [r["index"] for r in records] == list(range(N))            # input order
    assert [len(r["relevance"]) for r in records] == [len(s) for s in corpus]
    model = keras_lrp.load_model(token_model)
    for length in sorted({len(s) for s in corpus}):                    # in process, one batch per length
        rows = [i for i, s in enumerate(corpus) if len(s) == length]
        e = keras_lrp.explain(model, np.asarray([corpus[i] for i in rows]), batch_size=4, **SETTINGS)
        for k, i in enumerate(rows):
            assert np.array_equal(np.asarray(records[i]["relevance"]), e.word_relevance[k]), i
            assert records[i]["rest"] == e.rest[k] and records[i]["score"] == e.explained_score[k]
            assert records[i]["target"] == e.target[k] == np.argmax(e.scores[k])
    # conservation (eps=0, bias_factor=1): relevance.sum() + rest == score
    for r in records:
        assert abs(sum(r["relevance"]) + r["rest"] - r["score"]) <= 1e-8 * max(1.0, abs(r["score"]))
    # where the time went: the driver's stages, and each worker's per shard (what bench_scale.py prints)
    assert {"check", "hash", "verify", "ray", "merge"} <= set(uninterrupted.timings)
    for done in (uninterrupted.path.parent / "shards").glob("*.done.json"):
        done = json.loads(done.read_text())
        assert set(done["seconds"]) == {"read", "explain", "serialise", "hash", "write"}
        assert set(done["worker_setup"]) == {"import", "load", "compile"}


def test_parquet_output_and_a_finished_run_merged_again(uninterrupted, token_model, corpus, tmp_path):
    """output="parquet" holds the numbers of out.jsonl; the shards do not depend on the output, so
    the same run merged as JSON lines afterwards recomputes nothing and gives the same bytes."""
    out = tmp_path / "run"
    result = explain_corpus(token_model, corpus, out, num_workers=2, shard_size=SHARD, batch_size=4,
                            output="parquet", **SETTINGS)
    assert result.path == out / "out.parquet" and not (out / "out.jsonl").exists()
    assert list(distributed.read_corpus_output(result.path)) == read(uninterrupted.path)
    assert list(distributed.read_corpus_output(shard_files(out)[1])) == read(uninterrupted.path)[SHARD:2 * SHARD]
    again = explain_corpus(token_model, corpus, out, num_workers=2, shard_size=SHARD, batch_size=4, **SETTINGS)
    assert again.computed == [] and again.path.read_bytes() == uninterrupted.path.read_bytes()
    with pytest.raises(ValueError, match="output must be one of"):
        explain_corpus(token_model, corpus, out, output="csv", **SETTINGS)
    with pytest.raises(ValueError, match="records= rewrites JSON lines"):
        explain_corpus(token_model, corpus, out, output="parquet", records=lambda rs: rs, **SETTINGS)


def shard_files(out):
    return sorted((out / "shards").glob("shard-*.arrow"))


def temporary_files(out):
    """AtomicFile's temporary files (".<name>.<random>.part<ext>") left in ``out`` or its shards."""
    return sorted([*out.glob(".*.part*"), *(out / "shards").glob(".*.part*")])


def test_resume_after_failed_worker_redoes_nothing(uninterrupted, token_model, corpus, tmp_path):
    out = tmp_path / "run"
    # the worker finishes two shards, then raises on its next: the run fails part way
    with pytest.raises(Exception, match="simulated worker failure"):
        explain_corpus(token_model, corpus, out, num_workers=1, shard_size=SHARD, batch_size=4,
                       _fail_after_shards=2, **SETTINGS)
    assert not (out / "out.jsonl").exists()
    finished = {p.name: p.stat().st_mtime_ns for p in shard_files(out)}
    assert len(finished) == 2
    assert not temporary_files(out)                                    # no half-written file left

    resumed = explain_corpus(token_model, corpus, out, num_workers=2, shard_size=SHARD, batch_size=4, **SETTINGS)
    assert sorted(f"shard-{i:05d}.arrow" for i in resumed.reused) == sorted(finished)
    assert sorted(resumed.reused + resumed.computed) == list(range(N // SHARD))
    assert {name: (out / "shards" / name).stat().st_mtime_ns for name in finished} == finished  # not redone
    assert (out / "out.jsonl").read_bytes() == uninterrupted.path.read_bytes()


def test_a_retried_task_keeps_the_shards_it_had_finished(token_model, tmp_path):
    """A Ray task takes several shards; when its worker dies, Ray reruns the whole task on a new
    worker, which keeps the shards already written (same files, same records) and explains only the rest."""
    np.save(tmp_path / "x.npy", np.random.default_rng(6).integers(0, VOCAB, (3 * SHARD, 4)))
    corpus = distributed._Corpus("npy", str(tmp_path / "x.npy"), 3 * SHARD)
    shards = distributed._cut(3 * SHARD, SHARD)
    config = dict(SETTINGS, rule="all", method="lrp", batch_size=4, feature_relevance=False)
    (tmp_path / "shards").mkdir()
    args = (str(token_model), corpus, str(tmp_path / "shards"), "fingerprint", config, None, None)

    def task(shards):
        return {field: np.asarray([getattr(s, field) for s in shards]) for field in ("index", "start", "stop",
                                                                                      "byte_start", "byte_stop")}

    first = list(distributed._ShardExplainer(*args)(task(shards[:2])))      # died before its third shard
    written = {p.name: p.stat().st_ino for p in (tmp_path / "shards").iterdir()}
    retried_worker = distributed._ShardExplainer(*args)
    explain = retried_worker.explainer.attribute
    explained = []
    retried_worker.explainer.attribute = lambda x, **kw: explained.append(len(x)) or explain(x, **kw)
    retried = list(retried_worker(task(shards)))
    assert explained == [SHARD]                                             # the third shard only
    for a, b in zip(first, retried):
        assert {k: v.tolist() for k, v in a.items()} == {k: v.tolist() for k, v in b.items()}
    assert {name: (tmp_path / "shards" / name).stat().st_ino for name in written} == written


def test_a_failed_merge_stops_the_run_at_the_next_shard(uninterrupted, tmp_path):
    """The merge runs alongside the workers: when it fails (here the records= function raises), the
    next finished shard raises its error in the driver instead of the run going on to the end."""
    shards = [distributed._Shard(i, SHARD * i, SHARD * (i + 1)) for i in range(N // SHARD)]
    fingerprint = json.loads((uninterrupted.path.parent / "manifest.json").read_text())["fingerprint"]

    def records(stream):
        for record in stream:
            raise ValueError(f"no text for sequence {record['index']}")
        yield from ()

    merge = distributed._StreamingMerge(uninterrupted.path.parent / "shards", shards, fingerprint,
                                        tmp_path / "out.jsonl", "jsonl", records)
    merge.complete(0)
    merge._thread.join(timeout=60)
    with pytest.raises(ValueError, match="no text for sequence 0"):
        merge.complete(1)
    merge.abort()
    assert list(tmp_path.iterdir()) == []


KILLED_JOB = """
import json, os, pathlib, signal, sys, threading, time
from keras_lrp.distributed import explain_corpus

model, corpus, out = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
shard_size, settings = int(sys.argv[4]), json.loads(sys.argv[5])


def kill_after_two_shards():
    while len(list((out / "shards").glob("*.done.json"))) < 2:
        time.sleep(0.001)
    os.killpg(0, signal.SIGKILL)        # the whole job: this driver and the Ray processes it started


threading.Thread(target=kill_after_two_shards, daemon=True).start()
explain_corpus(model, corpus, out, num_workers=1, shard_size=shard_size, batch_size=4, **settings)
"""


def test_resume_after_killed_job_gives_the_same_file(uninterrupted, token_model, corpus, tmp_path):
    """SIGKILL to the driver and its Ray workers part way (no clean-up runs), then resume."""
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(ids) + "\n" for ids in corpus))
    out = tmp_path / "run"
    job = subprocess.run([sys.executable, "-c", KILLED_JOB, str(token_model), str(path), str(out), str(SHARD),
                          json.dumps(SETTINGS)],
                         capture_output=True, text=True, start_new_session=True, timeout=300)
    assert job.returncode == -9, job.stderr[-2000:]
    finished = {p.name: p.stat().st_mtime_ns for p in shard_files(out)}
    assert 2 <= len(finished) < N // SHARD, sorted(finished)        # killed part way
    assert not (out / "out.jsonl").exists()
    assert list(out.glob(".out.jsonl.*.part.jsonl"))                # was being merged while the worker ran

    resumed = explain_corpus(token_model, path, out, num_workers=2, shard_size=SHARD, batch_size=4, **SETTINGS)
    assert sorted(resumed.reused + resumed.computed) == list(range(N // SHARD))
    assert len(resumed.reused) >= 2
    for name in (f"shard-{i:05d}.arrow" for i in resumed.reused):   # verified and kept, not rewritten
        assert (out / "shards" / name).stat().st_mtime_ns == finished[name], name
    assert (out / "out.jsonl").read_bytes() == uninterrupted.path.read_bytes()
    assert not temporary_files(out)          # a killed writer's temporary files are removed at the restart


def test_complete_run_is_not_recomputed_and_settings_are_checked(uninterrupted, token_model, corpus):
    out = uninterrupted.path.parent
    before = uninterrupted.path.read_bytes()
    again = explain_corpus(token_model, corpus, out, num_workers=2, shard_size=SHARD, batch_size=4, **SETTINGS)
    assert again.computed == [] and sorted(again.reused) == list(range(N // SHARD))
    assert again.path.read_bytes() == before
    with pytest.raises(ValueError, match="other settings.*eps"):
        explain_corpus(token_model, corpus, out, shard_size=SHARD, batch_size=4, eps=1e-3, bias_factor=1.0,
                       dtype="float64")
    # a damaged shard file or completion record is found, so that shard alone would be recomputed
    shards = out / "shards"
    cut = [distributed._Shard(i, SHARD * i, SHARD * (i + 1)) for i in range(N // SHARD)]
    fingerprint = json.loads((out / "manifest.json").read_text())["fingerprint"]
    assert all(distributed._shard_complete(shards, s, fingerprint) for s in cut)
    assert not distributed._shard_complete(shards, cut[0], "another run")
    damaged = shards / "shard-00003.arrow"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 1                                              # same size, one bit flipped
    damaged.write_bytes(bytes(data))
    (shards / "shard-00005.done.json").unlink()
    # a symlink planted at a shard is not followed, even to a file with the right content (nor to
    # /dev/zero, which would be read without end): that shard is written again
    planted = shards / "shard-00001.arrow"
    copy = out / "elsewhere.arrow"
    copy.write_bytes(planted.read_bytes())
    planted.unlink()
    planted.symlink_to(copy)
    assert [s.index for s in cut if not distributed._shard_complete(shards, s, fingerprint)] == [1, 3, 5]
    with pytest.raises(OSError, match="not a regular file"):
        read_own_file("/dev/zero")


def test_float_npy_corpus_with_per_sample_targets(ray_instance, tmp_path):
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((6, 3)), keras.layers.LSTM(4), keras.layers.Dense(CLASSES)])
    model.save(tmp_path / "series.keras")
    x = np.random.default_rng(3).standard_normal((23, 6, 3))
    np.save(tmp_path / "x.npy", x)
    target = np.arange(23) % CLASSES
    result = explain_corpus(tmp_path / "series.keras", tmp_path / "x.npy", tmp_path / "out", num_workers=1,
                            shard_size=8, target=target, feature_relevance=True, **SETTINGS)
    records = read(result.path)
    e = keras_lrp.explain(keras_lrp.load_model(tmp_path / "series.keras"), x, target=target, **SETTINGS)
    assert [r["index"] for r in records] == list(range(23)) and [r["target"] for r in records] == target.tolist()
    assert np.array_equal(np.asarray([r["relevance"] for r in records]), e.relevance)   # (N, time, features)
    assert np.array_equal(np.asarray([r["rest"] for r in records]), e.rest)


def test_token_ids_through_an_embedding_matrix(ray_instance, corpus, tmp_path):
    """A model on embedding vectors (as the shipped SST models) with a separate (vocab, dim) matrix."""
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((None, 3)), keras.layers.Bidirectional(keras.layers.LSTM(3)),
                              keras.layers.Dense(CLASSES)])
    model.save(tmp_path / "vectors.keras")
    matrix = np.random.default_rng(5).standard_normal((VOCAB, 3)).astype("float32")
    np.save(tmp_path / "emb.npy", matrix)
    result = explain_corpus(tmp_path / "vectors.keras", corpus[:15], tmp_path / "out", num_workers=1,
                            shard_size=SHARD, embeddings=tmp_path / "emb.npy", **SETTINGS)
    records = read(result.path)
    assert [len(r["relevance"]) for r in records] == [len(s) for s in corpus[:15]]
    for i, ids in enumerate(corpus[:15]):
        e = keras_lrp.explain(model, matrix[ids][None], **SETTINGS)
        assert np.array_equal(np.asarray(records[i]["relevance"]), e.word_relevance[0]), i
        assert records[i]["rest"] == e.rest[0] and records[i]["target"] == e.target[0]
    np.save(tmp_path / "emb4.npy", np.zeros((VOCAB, 4), "float32"))
    with pytest.raises(ValueError, match="4-dim vectors, but the model takes"):
        explain_corpus(tmp_path / "vectors.keras", corpus, tmp_path / "out2", embeddings=tmp_path / "emb4.npy")


@pytest.mark.parametrize("lines, message", [
    (["[1, 2]", "[3, -1]"], "line 2: token ids must be in 0..19"),
    (["[1, 2]", "", "[3]"], "line 2: empty line"),
    (["[1, 2]", "[[1, 2], [3]]"], "line 2: not a JSON list of numbers"),
    (["[1, 2]", "[]"], "line 2: empty sequence"),
    (["[1.5, 2]"], "line 1: sequences must be integer token ids"),
])
def test_bad_corpus_fails_before_any_worker(token_model, tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(".", r"\.")):
        explain_corpus(token_model, path, tmp_path / "out")
    assert not shard_files(tmp_path / "out")


def test_bad_arguments(token_model, tmp_path):
    with pytest.raises(ValueError, match="num_workers must be a positive integer"):
        explain_corpus(token_model, [[1]], tmp_path, num_workers=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        explain_corpus(token_model, tmp_path / "missing.jsonl", tmp_path)
    with pytest.raises(ValueError, match="target out of range"):
        explain_corpus(token_model, [[1, 2]], tmp_path, target=CLASSES)
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="has shape"):
        explain_corpus(token_model, tmp_path / "x.npy", tmp_path)


MULTI_DEVICE = textwrap.dedent("""
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, keras_lrp
    from keras_lrp.distributed import MultiDeviceExplainer, available_devices
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, 4)), keras.layers.Bidirectional(keras.layers.LSTM(5)),
                              keras.layers.Dense(3)])
    x = np.random.default_rng(0).standard_normal((70, 6, 4))
    multi = MultiDeviceExplainer(model, eps=0.0, bias_factor=1.0, dtype="float64")
    assert len(multi.devices) == 2 == len(available_devices()), multi.devices
    for device, explainer in zip(multi.devices, multi.explainers):   # each function runs on its device
        with tf.device(device):   # as MultiDeviceExplainer.attribute calls it (keras_lrp.backend.device_scope)
            out = explainer._fn.concrete_function([tf.constant(x[:32])], tf.fill([32], -1), tf.zeros([32], tf.int32),
                                                   tf.fill([32], 6))
        assert out[0][0].device.endswith(device[-5:]), (out[0][0].device, device)
    a = multi.attribute(x, target=np.arange(70) % 3, batch_size=16)   # 5 chunks over 2 devices
    b = keras_lrp.LRP(model, eps=0.0, bias_factor=1.0, dtype="float64").attribute(
        x, target=np.arange(70) % 3, batch_size=16)
    for name in ("relevance", "scores", "target", "rest"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    a2 = multi.attribute(x[:40], batch_size=8)                        # second call, threads only
    b2 = keras_lrp.explain(model, x[:40], eps=0.0, bias_factor=1.0, dtype="float64", batch_size=8)
    assert np.array_equal(a2.relevance, b2.relevance) and np.array_equal(a2.target, b2.target)
    print("OK")
""")


def test_two_logical_cpu_devices_equal_one_device_bit_for_bit():
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", MULTI_DEVICE], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stderr[-3000:]


def test_cli_engine_ray_equals_local_engine(ray_instance, tmp_path):
    """``keras-lrp explain --input F --engine ray --out-dir D`` on the shipped model writes the very
    JSON lines of the local engine's ``--json`` (same fields: text, tokens, class names, ...; same
    float64 numbers)."""
    from keras_lrp.cli import main
    sentences = ["a gorgeous , witty movie .", "", "i hate the plot .", "it is fine"]
    src = tmp_path / "corpus.txt"
    src.write_text("\n".join(sentences) + "\n")
    options = ["--float64", "--eps", "0", "--bias-factor", "1", "--quiet"]
    code = main(["explain", "--input", str(src), "--engine", "ray", "--out-dir", str(tmp_path / "run"),
                 "--shard-size", "2", *options])
    assert code == 0
    assert main(["explain", "--input", str(src), "--json", str(tmp_path / "local.jsonl"), *options]) == 0
    rows, local = read(tmp_path / "run" / "out.jsonl"), read(tmp_path / "local.jsonl")
    assert [r["text"] for r in rows] == [s for s in sentences if s]
    assert rows == local


def test_cli_engine_ray_baseline_options_equal_local_engine(ray_instance, tmp_path, capsys):
    """``--method shapley --samples 3 --seed 1 --baseline unk`` on Ray workers writes the local engine's
    JSON lines (the options recorded in each); the manifest records them, so another --seed in the same
    --out-dir is refused before any worker starts."""
    from keras_lrp.cli import main
    from keras_lrp.text import Vocabulary

    Vocabulary(["good", "bad", "film", "plot"]).save(tmp_path / "vocab.json")
    keras.utils.set_random_seed(4)
    keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(6, 3, mask_zero=True),
                      keras.layers.LSTM(2), keras.layers.Dense(2)]).save(tmp_path / "m.keras")
    (tmp_path / "in.txt").write_text("good film\nbad plot , bad film\nfilm\n")
    model = ["--model", str(tmp_path / "m.keras"), "--vocab", str(tmp_path / "vocab.json"), "--float64", "--quiet"]
    options = ["--method", "shapley", "--samples", "3", "--seed", "1", "--baseline", "unk"]
    ray_run = ["explain", "--input", str(tmp_path / "in.txt"), "--engine", "ray", "--out-dir", str(tmp_path / "run"),
               "--shard-size", "2", *model]
    assert main([*ray_run, *options]) == 0
    assert main(["explain", "--input", str(tmp_path / "in.txt"), "--json", str(tmp_path / "local.jsonl"), *model,
                 *options]) == 0
    rows, local = read(tmp_path / "run" / "out.jsonl"), read(tmp_path / "local.jsonl")
    assert rows == local
    assert rows[0]["method_options"] == {"samples": 3, "seed": 1, "baseline": "unk"}
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["method_options"]["samples"] == 3 and len(manifest["method_options"]["baseline"]["sha256"]) == 64
    other_seed = ["--method", "shapley", "--samples", "3", "--seed", "2", "--baseline", "unk"]
    assert main([*ray_run, *other_seed]) == 1
    assert "differs in: method_options" in capsys.readouterr().err


def test_cli_engine_ray_prints_only_its_own_lines(tmp_path):
    """Ray's start-up lines, Ray Data's execution plan, the core worker's "E ... core_worker.cc"
    line and Ray Data's deprecation warnings about its own options are hidden: stderr holds the
    command's one line, what it wrote (a fresh process starting Ray)."""
    from keras_lrp.text import Vocabulary

    Vocabulary(["good", "bad", "film"]).save(tmp_path / "vocab.json")
    keras.utils.set_random_seed(3)
    keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(5, 2),
                      keras.layers.LSTM(2), keras.layers.Dense(2)]).save(tmp_path / "m.keras")
    (tmp_path / "in.txt").write_text("good film\nbad\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP", "RAY_"))}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    r = subprocess.run([sys.executable, "-m", "keras_lrp.cli", "explain", "--input", str(tmp_path / "in.txt"),
                        "--model", str(tmp_path / "m.keras"), "--vocab", str(tmp_path / "vocab.json"),
                        "--engine", "ray", "--out-dir", str(tmp_path / "run")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("keras-lrp: wrote 2 explanations to "), r.stderr
    assert [rec["tokens"] for rec in read(tmp_path / "run" / "out.jsonl")] == [["good", "film"], ["bad"]]


@pytest.mark.parametrize("argv,message", [
    (["explain", "a sentence", "--engine", "ray", "--out-dir", "x"], "give --input FILE"),
    (["explain", "--input", "f.txt", "--engine", "ray"], "needs --out-dir"),
    (["explain", "--input", "f.txt", "--engine", "ray", "--out-dir", "x", "--html", "a.html"], "--html is for"),
    (["explain", "some text", "--workers", "3"], "--workers is for --engine ray"),
])
def test_cli_engine_usage_errors(argv, message, capsys):
    from keras_lrp.cli import main
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_engine_ray_never_writes_through_a_symlink(ray_instance, tmp_path):
    """Every file of ``--engine ray`` (ids.jsonl, embeddings.npy, shards, manifest, out.jsonl, and
    the old guessable temporary names) is created fresh: a symlink planted there is replaced and
    the file it points at is untouched; the driver's files get 0o666 & ~umask."""
    import threading

    from keras_lrp.cli import main
    from keras_lrp.text import Vocabulary

    words = ["good", "bad", "film", "plot"]
    Vocabulary(words).save(tmp_path / "vocab.json")
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((None, 3)), keras.layers.LSTM(2), keras.layers.Dense(2)])
    model.save(tmp_path / "vectors.keras")
    np.save(tmp_path / "emb.npy", np.random.default_rng(0).standard_normal((len(words) + 2, 3)))
    (tmp_path / "in.txt").write_text("good film\nbad plot\nfilm\n")
    run = tmp_path / "run"
    (run / "shards").mkdir(parents=True)
    planted = ["ids.jsonl", "embeddings.npy", "out.jsonl", "shards/shard-00000.arrow", "shards/shard-00000.done.json",
               f".out.jsonl.{os.getpid()}.tmp", f".manifest.json.{os.getpid()}.{threading.get_ident()}.tmp"]
    for k, name in enumerate(planted):
        (tmp_path / f"victim{k}").write_text("secret")
        os.symlink(tmp_path / f"victim{k}", run / name)
    old_umask = os.umask(0o027)
    try:
        code = main(["explain", "--input", str(tmp_path / "in.txt"), "--model", str(tmp_path / "vectors.keras"),
                     "--vocab", str(tmp_path / "vocab.json"), "--embeddings", str(tmp_path / "emb.npy"),
                     "--engine", "ray", "--out-dir", str(run), "--shard-size", "2", "--quiet"])
    finally:
        os.umask(old_umask)
    assert code == 0
    assert [(tmp_path / f"victim{k}").read_text() for k in range(len(planted))] == ["secret"] * len(planted)
    for name in planted[:5] + ["manifest.json"]:
        assert not os.path.islink(run / name) and (run / name).is_file(), name
    for name in ("ids.jsonl", "texts.jsonl", "embeddings.npy", "out.jsonl", "manifest.json"):
        assert (run / name).stat().st_mode & 0o777 == 0o640, name
    assert [r["text"] for r in read(run / "out.jsonl")] == ["good film", "bad plot", "film"]
