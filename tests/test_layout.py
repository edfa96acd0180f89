"""The package layout: the engine never imports the applications, no import cycles between the
subpackages, and the top-level names are the functions/classes whatever the import order."""
import ast
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "keras_lrp"
APPS = ("sst", "experiments", "cli")
#: what each part may import from keras_lrp (besides itself); "engine" = everything outside APPS
ALLOWED = {"engine": {"engine"}, "sst": {"engine"}, "experiments": {"engine", "sst"},
           "cli": {"engine", "sst", "experiments"}}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: pathlib.Path):
    """Absolute names of the keras_lrp modules ``path`` imports (relative imports resolved)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            yield name, node.lineno
            for alias in node.names:     # "from . import cli" imports keras_lrp.cli
                yield f"{name}.{alias.name}", node.lineno


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in APPS else "engine"


def _lazy_table_targets():
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            return {f"keras_lrp.{v.value}" for v in node.value.values}
    raise AssertionError("keras_lrp/__init__.py has no _EXPORTS table")


def _edges():
    """(importer part, imported part, importer file, line) for every keras_lrp import."""
    known = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    for path in sorted(PACKAGE.rglob("*.py")):
        src = _part(_module_name(path))
        for name, line in _imports(path):
            if name and name.split(".")[0] == "keras_lrp" and name in known:
                yield src, _part(name), path.relative_to(ROOT), line, name


def test_every_python_file_is_classified():
    names = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    assert {"keras_lrp.sst", "keras_lrp.experiments", "keras_lrp.cli", "keras_lrp.explainer"} <= names
    old = ["sst.py", "evaluate.py", "train_sst.py", "toy.py", "cli.py"]   # moved into the subpackages
    assert not [name for name in old if (PACKAGE / name).exists()]


def test_engine_does_not_import_the_applications():
    lazy = _lazy_table_targets()
    bad = [f"{path}:{line} imports {name}" for src, dst, path, line, name in _edges()
           if src == "engine" and dst != "engine"]
    assert not bad, bad
    # only the lazy table of keras_lrp/__init__ names the SST application (read, not imported)
    assert {t for t in lazy if _part(t) != "engine"} <= {"keras_lrp.sst.reader", "keras_lrp.sst.pretrained"}


def test_no_import_cycles_between_the_parts():
    bad = [f"{path}:{line} ({src}) imports {name} ({dst})" for src, dst, path, line, name in _edges()
           if dst != src and dst not in ALLOWED[src]]
    assert not bad, bad


def test_the_checker_sees_relative_imports():
    """The import parser resolves ``from .. import x`` and ``from ..sst import y`` (no vacuous pass)."""
    edges = {(src, dst) for src, dst, *_ in _edges()}
    assert ("cli", "experiments") in edges and ("experiments", "sst") in edges and ("sst", "engine") in edges


def _prints_ok(code: str) -> None:
    """Run ``code`` in a fresh interpreter on this checkout; it must print exactly 'ok'."""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3"))
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


@pytest.mark.parametrize("first", ["import keras_lrp.explainer", "import keras_lrp.sst",
                                   "import keras_lrp.cli", "import keras_lrp.experiments", "pass"])
def test_top_level_names_in_any_import_order(first):
    code = (f"{first}\nfrom keras_lrp import LRP, explain, load_pretrained\nimport keras_lrp.explainer\n"
            "import inspect\n"
            "assert inspect.isfunction(explain) and explain is keras_lrp.explainer.explain, explain\n"
            "assert inspect.isclass(LRP) and LRP is keras_lrp.explainer.LRP, LRP\n"
            "assert inspect.isfunction(load_pretrained), load_pretrained\n"
            "import keras_lrp\nassert keras_lrp.explain is explain\nprint('ok')")
    _prints_ok(code)


def test_reverse_order_explain_first():
    code = ("from keras_lrp import explain, LRP\nimport keras_lrp.explainer\n"
            "assert explain is keras_lrp.explainer.explain and LRP is keras_lrp.explainer.LRP\nprint('ok')")
    _prints_ok(code)


def test_importing_the_applications_does_not_import_tensorflow():
    code = ("import sys, keras_lrp, keras_lrp.cli, keras_lrp.sst, keras_lrp.experiments\n"
            "import keras_lrp.experiments.evaluate, keras_lrp.sst.train\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\nprint(keras_lrp.__version__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
