"""Every example of README.md and models/README.md runs as printed (issue 22).

* Python blocks run in order, each in a fresh namespace, or in the namespace of the block before it
  when the line before the block is ``<!-- readme-test: continues -->``.
* A line ending in ``# -> TEXT`` is checked: the repr of its expression must be TEXT (``...`` in TEXT
  matches anything). ``python tests/test_readme.py --update`` rewrites those values with what the
  code prints now.
* The user's own files that a block names (``sentiment.h5``, ``tokenizer.json``, ...) get small
  stand-ins, made in the temporary folder the blocks run in (:data:`STAND_INS`); a block that shows
  a few lines of a longer program (the seq2seq snippet, the seed notebook's cell) gets the names it
  assumes from :data:`PRELUDES`, chosen by a string in the block.
* Command blocks hold runnable commands only: every ``keras-lrp`` command parses with the command's
  own argument parser, and no ``[--option]`` notation is left in them.
"""
import ast
import io
import os
import re
import shlex
import sys
import tempfile
import textwrap
import tokenize
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "models" / "README.md"]
CONTINUES = "<!-- readme-test: continues -->"
_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)\s*$")
_CHECK = re.compile(r"^#\s*->\s?(?P<expected>.*?)\s*$")


@dataclass
class Block:
    """A fenced code block: ``line`` is the file line of its first code line."""

    path: Path
    line: int
    lang: str
    code: str
    continues: bool


def blocks(path: Path, lang: str) -> List[Block]:
    """The ``lang`` code blocks of a markdown file, dedented (blocks inside list items are indented)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not (m and m["lang"]):
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if _FENCE.match(lines[j]) and not _FENCE.match(lines[j])["lang"])
        before = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        if m["lang"] == lang:
            found.append(Block(path, i + 2, lang, textwrap.dedent("\n".join(lines[i + 1:end])) + "\n",
                               before == CONTINUES))
        i = end + 1
    return found


class Printed(NamedTuple):
    """A checked line: its file line, the expected repr, and the repr the code gave."""

    line: int
    expected: str
    got: str


def _checks(code: str) -> Dict[int, str]:
    """{block line: expected repr} of the ``# -> `` comments."""
    found = {}
    for tok in tokenize.generate_tokens(io.StringIO(code).readline):
        if tok.type == tokenize.COMMENT:
            m = _CHECK.match(tok.string)
            if m:
                found[tok.start[0]] = m["expected"]
    return found


def matches(expected: str, got: str) -> bool:
    return re.fullmatch(".*".join(map(re.escape, expected.split("..."))), got, re.S) is not None


def run_block(block: Block, namespace: dict) -> List[Printed]:
    """Run ``block`` statement by statement in ``namespace``; the checked lines, with what they gave."""
    checks = _checks(block.code)
    printed = []
    for stmt in ast.parse(block.code).body:
        where = f"{block.path.relative_to(ROOT)}:{block.line + stmt.lineno - 1}"
        expected = checks.pop(stmt.end_lineno, None)
        if expected is None:
            exec(compile(ast.Module([stmt], type_ignores=[]), where, "exec"), namespace)
            continue
        assert isinstance(stmt, ast.Expr), f"{where}: a '# -> ' comment must follow an expression"
        got = repr(eval(compile(ast.Expression(stmt.value), where, "eval"), namespace))
        printed.append(Printed(block.line + stmt.end_lineno - 1, expected, got))
    assert not checks, f"{block.path.name}: '# -> ' comments inside a statement, lines {list(checks)}"
    return printed


# ----------------------------------------------------------------------------- stand-ins

TRAIN_TEXTS = ["I loved it!", "A dull, plodding film.", "loved the acting", "dull and slow", "it is a great film"]


def _sentiment_h5(folder: Path) -> None:
    """A tf.keras text classifier of fixed input length 20, saved as .h5, and its Tokenizer JSON."""
    import tf_keras
    from tf_keras.preprocessing.text import Tokenizer

    tokenizer = Tokenizer()
    tokenizer.fit_on_texts(TRAIN_TEXTS)
    (folder / "tokenizer.json").write_text(tokenizer.to_json())
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([tf_keras.Input((20,)),
                                 tf_keras.layers.Embedding(len(tokenizer.word_index) + 1, 8),
                                 tf_keras.layers.LSTM(8), tf_keras.layers.Dense(2, activation="softmax")])
    model.save(folder / "sentiment.h5")


def _reviews_keras(folder: Path) -> None:
    """A Keras 3 model starting with TextVectorization (then a masked Embedding)."""
    import keras

    keras.utils.set_random_seed(0)
    vectorize = keras.layers.TextVectorization(max_tokens=50)
    vectorize.adapt(TRAIN_TEXTS)
    text = keras.Input((1,), dtype="string")
    h = keras.layers.LSTM(8)(keras.layers.Embedding(50, 8, mask_zero=True)(vectorize(text)))
    keras.Model(text, keras.layers.Dense(2, activation="softmax")(h)).save(folder / "reviews.keras")


def _forecaster(folder: Path) -> None:
    """A Keras 3 LSTM regressor and windows of shape (16, 24, 3)."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    keras.Sequential([keras.Input((None, 3)), keras.layers.LSTM(8), keras.layers.Dense(1)]).save(
        folder / "forecaster.keras")
    np.save(folder / "windows.npy", np.random.default_rng(0).standard_normal((16, 24, 3)).astype("float32"))


#: file name a block may name -> what makes it (and the files that belong with it)
STAND_INS: Dict[str, Callable[[Path], None]] = {
    "sentiment.h5": _sentiment_h5, "tokenizer.json": _sentiment_h5, "reviews.keras": _reviews_keras,
    "forecaster.keras": _forecaster, "windows.npy": _forecaster}

#: a string in a block -> the code run before it (the names the surrounding prose assumes)
PRELUDES = {
    "initial_state=[h, c]": """
import keras, numpy as np, keras_lrp
encoder_inputs, decoder_inputs, n, k = keras.Input((None, 7)), keras.Input((None, 9)), 9, 3
x_enc = np.random.default_rng(0).random((2, 5, 7)).astype("float32")
x_dec = np.random.default_rng(1).random((2, 4, 9)).astype("float32")
""",
    "from LRP_utils import": """
import keras, numpy as np
from LRP_utils import LRP_LSTMCell
dim, batch, seq_len, eps, bias_factor = 60, 2, 7, 0.001, 0.0
_x = keras.Input((None, dim))
model = keras.Model(_x, keras.layers.Dense(5)(keras.layers.Bidirectional(keras.layers.RNN(LRP_LSTMCell(dim)))(_x)))
data = np.random.default_rng(0).standard_normal((batch, seq_len, dim)).astype("float32")
Rout_mask = np.eye(5)[[1, 3]]
""",
}


@contextmanager
def readme_folder() -> Iterator[Path]:
    """A temporary working folder, with the repository's ``common_utils/`` importable (as the
    README's seed section says to arrange)."""
    old_cwd, path = os.getcwd(), str(ROOT / "common_utils")
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        sys.path.insert(0, path)
        try:
            yield Path(folder)
        finally:
            sys.path.remove(path)
            os.chdir(old_cwd)


def run_doc(path: Path) -> List[Printed]:
    """Run every Python block of ``path`` in a temporary folder; the checked lines."""
    printed, namespace = [], None
    with readme_folder() as folder:
        for block in blocks(path, "python"):
            if not block.continues or namespace is None:
                namespace = {"__name__": "__readme__"}
            for name, make in STAND_INS.items():
                if name in block.code and not (folder / name).exists():
                    make(folder)
            for key, prelude in PRELUDES.items():
                if key in block.code:
                    exec(prelude, namespace)
            printed += run_block(block, namespace)
    return printed


# ----------------------------------------------------------------------------- tests


def _doc_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_examples_are_found():
    python = {_doc_id(p): blocks(p, "python") for p in DOCS}
    assert len(python["README.md"]) >= 8 and len(python["models/README.md"]) >= 1
    checked = sum(len(_checks(b.code)) for b in python["README.md"])
    assert checked >= 8, "the README's printed values are checked lines ('# -> ')"
    assert matches("Explanation(2 samples, target=[2, ...])", "Explanation(2 samples, target=[2, 2, 2, ...])")
    assert not matches("time=6", "time=6..6")


def test_every_python_block_runs_as_printed(request):
    import pytest

    pytest.importorskip("tf_keras")     # the .h5 stand-in is written by tf.keras
    request.addfinalizer(lambda: sys.modules.get("matplotlib.pyplot") and sys.modules["matplotlib.pyplot"].close("all"))
    # a block may register a propagator for its own layer (the README's extension example): keep the
    # registry as it was for the other tests
    from keras_lrp.propagators import base
    registry, rows = dict(base._REGISTRY), list(base._ROWS)

    def restore():
        base._REGISTRY.clear()
        base._REGISTRY.update(registry)
        base._ROWS[:] = rows
    request.addfinalizer(restore)
    wrong = [f"{_doc_id(doc)}:{p.line}: printed {p.expected!r}, the code gives {p.got!r}"
             for doc in DOCS for p in run_doc(doc) if not matches(p.expected, p.got)]
    assert not wrong, "\n".join(wrong) + "\n(python tests/test_readme.py --update rewrites them)"


def test_command_blocks_hold_runnable_commands_only():
    from keras_lrp.cli import _parser

    parser = _parser()
    for doc in DOCS:
        for block in blocks(doc, "bash"):
            for k, line in enumerate(block.code.splitlines()):
                where = f"{_doc_id(doc)}:{block.line + k}"
                words = shlex.split(line, comments=True)
                assert not any(re.match(r"\[-|<[A-Za-z_]+>$", w) for w in words), f"{where}: notation, not a command"
                command = " ".join(shlex.quote(w) for w in words)
                for part in re.split(r" (?:&&|\||;) ", command):
                    argv = shlex.split(part)
                    if argv[:1] == ["keras-lrp"]:
                        try:
                            parser.parse_args(argv[1:])
                        except SystemExit as exit_:
                            assert exit_.code == 0, f"{where}: keras-lrp refuses {argv[1:]}"


def test_commands_on_your_own_files_run(capsys):
    """The command lines that name the user's own files run on the stand-ins, as printed."""
    import pytest

    from keras_lrp.cli import main

    pytest.importorskip("tf_keras")
    ran = []
    with readme_folder() as folder:
        for doc in DOCS:
            for block in blocks(doc, "bash"):
                for k, line in enumerate(block.code.splitlines()):
                    argv = shlex.split(line, comments=True)
                    model = argv[argv.index("--model") + 1] if "--model" in argv else None
                    if argv[:1] != ["keras-lrp"] or model not in STAND_INS:
                        continue
                    for name in STAND_INS:
                        if name in argv and not (folder / name).exists():
                            STAND_INS[name](folder)
                    assert main(argv[1:]) == 0, f"{_doc_id(doc)}:{block.line + k}: {capsys.readouterr().err}"
                    ran.append(argv)
        assert (folder / "heatmaps.html").is_file() and (folder / "window0.png").is_file()
    assert len(ran) >= 3


# ----------------------------------------------------------------------------- --update


def update(path: Path) -> int:
    """Rewrite the ``# -> `` values of ``path`` that differ from what the code prints; the count."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    changed = 0
    for p in run_doc(path):
        if not matches(p.expected, p.got):
            i = p.line - 1
            head = lines[i][:lines[i].rindex("# ->")]
            lines[i] = f"{head}# -> {p.got}\n"
            changed += 1
    path.write_text("".join(lines), encoding="utf-8")
    return changed


if __name__ == "__main__":
    if sys.argv[1:2] != ["--update"]:
        sys.exit("usage: python tests/test_readme.py --update [FILE.md ...]")
    os.environ.setdefault("MPLBACKEND", "Agg")
    for doc in [Path(p).resolve() for p in sys.argv[2:]] or DOCS:
        print(f"{_doc_id(doc)}: {update(doc)} printed values rewritten")
