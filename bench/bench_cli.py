"""The ``keras-lrp explain`` command on large and hostile inputs: peak memory (RSS) and time.

Each run is a new process on a tiny token model (Embedding(12, 8) + LSTM(8) + Dense(2)) made in a
temporary folder; the peak RSS is the process's own (``wait4``), so TensorFlow's ~0.5-0.7 GB is
in every number.

    python bench/bench_cli.py stream 10000 100000 1000000   # lines on stdin -> --json --quiet
    python bench/bench_cli.py long-line                      # one 10 MB line of "x.).).)"
    python bench/bench_cli.py filters                        # a Keras Tokenizer JSON, 2 MB filters

``stream``: peak RSS should not grow with the number of lines (the CLI reads, explains and writes
in chunks). ``long-line``: the line is refused (more tokens than --max-length) at the cost of
about --max-length tokens. ``filters``: time per 3-word sentence once the vocabulary is loaded.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

WORDS = "i love hate the movie plot is boring interesting".split()


def _model(folder: str) -> None:
    from keras_lrp.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    import keras

    from keras_lrp.text import Vocabulary

    vocab = Vocabulary(WORDS)
    vocab.save(os.path.join(folder, "vocab.json"))
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(len(vocab), 8),
                              keras.layers.LSTM(8), keras.layers.Dense(2)])
    model.save(os.path.join(folder, "m.keras"))


def _run(argv, stdin_path: str):
    """(exit code, peak RSS in MiB, wall seconds, its last "keras-lrp: ..." line) of ``keras-lrp argv``."""
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    with open(stdin_path, "rb") as stdin, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "keras_lrp.cli", *argv], stdin=stdin,
                                stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        said = [line for line in err.read().decode("utf-8", "replace").splitlines() if line.startswith("keras-lrp")]
    return proc.returncode, usage.ru_maxrss / 1024, seconds, said[-1][:200] if said else ""


def stream(folder: str, sizes) -> None:
    print(f"{'lines':>10s} {'exit':>5s} {'peak RSS':>10s} {'wall':>9s} {'lines/s':>9s}")
    for n in sizes:
        src = os.path.join(folder, f"in{n}.txt")
        with open(src, "w") as f:
            for i in range(n):
                f.write(" ".join(WORDS[(i + k) % len(WORDS)] for k in range(3 + i % 5)) + "\n")
        out = os.path.join(folder, "out.jsonl")
        code, rss, seconds, tail = _run(["explain", "--model", os.path.join(folder, "m.keras"), "--vocab",
                                         os.path.join(folder, "vocab.json"), "--json", out, "--quiet"], src)
        print(f"{n:>10,d} {code:>5d} {rss:>8.0f} MiB {seconds:>7.1f} s {n / seconds:>9,.0f}"
              + ("" if code == 0 else f"   {tail}"), flush=True)
        os.unlink(src)


def long_line(folder: str) -> None:
    src = os.path.join(folder, "long.txt")
    with open(src, "w") as f:
        f.write("x" + ".)" * 5_000_000 + "\n")
    for name, model in (("tiny token model", ["--model", os.path.join(folder, "m.keras"), "--vocab",
                                               os.path.join(folder, "vocab.json")]),
                        ("shipped SST-5 model", [])):
        code, rss, seconds, tail = _run(["explain", *model, "--quiet"], src)
        print(f"10 MB line of x.).).), {name}: exit {code}, peak RSS {rss:.0f} MiB, {seconds:.1f} s\n  {tail}",
              flush=True)


def filters(folder: str) -> None:
    from keras_lrp.cli.vocab import load_vocabulary

    config = {"num_words": None, "filters": "".join(chr(c) for c in range(0x4E00, 0x4E00 + 20_000)) * 35,
              "lower": True, "split": " ", "char_level": False, "oov_token": None,
              "word_index": json.dumps({w: i + 1 for i, w in enumerate(WORDS)})}
    path = os.path.join(folder, "tok.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"class_name": "Tokenizer", "config": config}, f, ensure_ascii=False)
    size = os.path.getsize(path)
    tokenizer = load_vocabulary(path).tokenizer
    n = 50
    start = time.perf_counter()
    for _ in range(n):
        tokenizer.tokenize("I love it")
    per = (time.perf_counter() - start) / n
    print(f"Keras Tokenizer JSON, {len(config['filters']):,}-character filters ({size / 2**20:.1f} MiB file): "
          f"{per * 1e3:.3f} ms per 3-word sentence")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["stream", "long-line", "filters"])
    parser.add_argument("sizes", nargs="*", type=int, default=[10_000, 100_000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        if args.what != "filters":
            _model(folder)
        {"stream": lambda: stream(folder, args.sizes), "long-line": lambda: long_line(folder),
         "filters": lambda: filters(folder)}[args.what]()


if __name__ == "__main__":
    main()
