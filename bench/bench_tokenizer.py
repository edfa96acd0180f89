"""Tokenizer time on 1 KB, 100 KB and 1 MB lines: ordinary prose and hostile shapes.

Every text path of keras_lrp.text is linear in the input; this prints the CPU time (and wall
time) of ``tokenize`` per line so a regression to quadratic behaviour shows at once (the old
recursive tokenizer needed 73-92 s for one 40 KB ``x)))...`` line and hit RecursionError on
``"n't" * 1000``).

    python bench/bench_tokenizer.py            # all shapes, 1 KB / 100 KB / 1 MB
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from typing import Callable, Dict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_lrp.text import tokenize  # noqa: E402

SIZES = {"1 KB": 1_000, "100 KB": 100_000, "1 MB": 1_000_000}


def _repeat(unit: str) -> Callable[[int], str]:
    return lambda n: (unit * (n // len(unit) + 1))[:n]


def _unique_words(n: int) -> str:
    rng = random.Random(0)
    words, size = [], 0
    while size < n:
        word = "".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(2, 9)))
        word += rng.choice(["", "", ",", ".", "'s", ")", "n't", "?!"])
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:n]


SHAPES: Dict[str, Callable[[int], str]] = {
    "prose": _repeat("It's a well-made, often funny film (the best of 2002) -- don't miss it. "),
    "unique words": _unique_words,
    "x))) (trailing punctuation)": lambda n: "x" + ")" * (n - 1),
    "n'tn't... (one chunk)": lambda n: "n't" * (n // 3),
    "x.).). (one chunk)": lambda n: "x" + ".)" * ((n - 1) // 2),
    "'''...a.b. (apostrophes)": lambda n: "'" * (n - 4) + "a.b.",
    "dots ......": lambda n: "a" + "." * (n - 2) + "b",
}


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    print(f"{'line':32s}" + "".join(f"{label:>22s}" for label in SIZES))
    for name, make in SHAPES.items():
        cells = []
        for size in SIZES.values():
            line = make(size)
            cpu, wall = time.process_time(), time.perf_counter()
            tokens = tokenize(line)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            cells.append(f"{cpu:7.3f} s cpu ({len(tokens):>7d} tok)")
        print(f"{name:32s}" + "".join(f"{c:>22s}" for c in cells))


if __name__ == "__main__":
    main()
