import importlib.util
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

TESTS = pathlib.Path(__file__).resolve().parent
ROOT = TESTS.parent
DATA = TESTS / "data"     # copies of the project's shared material; provenance in tests/data/README.md
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(ROOT))   # test this checkout's keras_lrp, whatever else is installed


from keras_lrp.quiet import keras_backend_name  # noqa: E402  (imports no backend)

#: the Keras backend of this test run (Keras fixes it at import: one process per backend)
BACKEND = keras_backend_name()
#: the test files run on every backend: the golden cases (with their numpy oracle), the functional zoo and the
#: cross-backend checks. The other files run on TensorFlow only, except the oracle files below.
CORE_FILES = {"test_golden.py", "test_functional_zoo.py", "test_backends.py"}
#: the files that check the engine against the numpy oracles (tests/oracle*.py), backend-neutral: all run on
#: TensorFlow; on another backend KERAS_LRP_TEST_ORACLES selects them (they cost ~1-8 min each on JAX, where
#: every case compiles its own explain function with XLA).
ORACLE_FILES = {"test_attention.py", "test_canonical.py", "test_cells.py", "test_conv_lstm.py",
                "test_coverage_layers.py", "test_coverage_recurrent.py", "test_explain.py", "test_masking.py",
                "test_normalization.py", "test_ops.py", "test_properties.py", "test_rules.py", "test_seed_flow.py",
                "test_simple_rnn.py", "test_stacked_cells.py", "test_states.py", "test_zero_limit.py"}
#: the oracle files of a default run on another backend: "all" its tests, or "first": each test function at
#: its first parametrization only (TensorFlow runs the others). Every op propagator, the rule objects and
#: the LSTM cell, ~2 min on JAX (README, Backends).
ORACLE_DEFAULT = {"test_ops.py": "all", "test_rules.py": "first", "test_cells.py": "first"}
_ORACLE_CHOICES = ("default", "all", "none")


def _oracle_selection() -> str:
    """KERAS_LRP_TEST_ORACLES: "default" (unset), "all" (every oracle file at every parametrization) or
    "none" (the core files only); it matters on the backends other than TensorFlow."""
    choice = os.environ.get("KERAS_LRP_TEST_ORACLES", "default").strip().lower() or "default"
    if choice not in _ORACLE_CHOICES:
        raise pytest.UsageError(f"KERAS_LRP_TEST_ORACLES={choice!r}: use one of {', '.join(_ORACLE_CHOICES)}.")
    return choice


#: the backend's own package is not installed (e.g. ``KERAS_BACKEND=torch`` without torch): nothing runs, and
#: the run says so and passes, so that the README's test command works with or without the optional backends
MISSING = importlib.util.find_spec(BACKEND) is None


def _runs_here(name: str) -> bool:
    """Whether test file ``name`` runs on this backend."""
    if MISSING:
        return False
    if BACKEND == "tensorflow" or name in CORE_FILES:
        return True
    choice = _oracle_selection()
    return name in ORACLE_FILES and (choice == "all" or (choice == "default" and name in ORACLE_DEFAULT))


def pytest_configure(config):
    config.addinivalue_line("markers", "tensorflow_only: a test run on the TensorFlow backend only (the reason "
                                       "is beside it); skipped on the other backends")
    if BACKEND == "jax" and os.environ.get("JAX_ENABLE_X64", "").lower() not in ("1", "true"):
        raise pytest.UsageError("the tests on the JAX backend need float64: run them with JAX_ENABLE_X64=1 "
                                "(KERAS_BACKEND=jax JAX_ENABLE_X64=1 python -m pytest -q).")
    _oracle_selection()


def _missing_message() -> str:
    return f"{BACKEND} is not installed, so no test runs on it (pip install 'keras-lrp[{BACKEND}]' to run them)"


def pytest_report_header(config):
    if MISSING:
        return f"keras_lrp on {BACKEND}: {_missing_message()}"
    if BACKEND != "tensorflow":
        choice = _oracle_selection()
        files = {"all": "all", "none": "none",
                 "default": ", ".join(f"{name} ({part})" for name, part in sorted(ORACLE_DEFAULT.items()))}[choice]
        return f"keras_lrp on {BACKEND}: the core files and the oracle files: {files} (KERAS_LRP_TEST_ORACLES)"
    return None


def pytest_ignore_collect(collection_path, config):
    name = collection_path.name
    if name.startswith("test_") and name.endswith(".py") and not _runs_here(name):
        return True
    return None


def pytest_sessionfinish(session, exitstatus):
    if MISSING and exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.OK     # (the summary says why nothing ran)


def pytest_terminal_summary(terminalreporter):
    if MISSING:
        terminalreporter.write_line(f"keras_lrp: {_missing_message()}.")


def pytest_collection_modifyitems(config, items):
    if BACKEND == "tensorflow":
        return
    skip = pytest.mark.skip(reason=f"run on the TensorFlow backend only; this run is on {BACKEND}")
    for item in items:
        if "tensorflow_only" in item.keywords:
            item.add_marker(skip)
    if _oracle_selection() == "default":
        kept, thinned, seen = [], [], set()
        for item in items:
            function = (item.path.name, getattr(item, "originalname", item.name))
            if ORACLE_DEFAULT.get(item.path.name) == "first" and hasattr(item, "callspec") and function in seen:
                thinned.append(item)
            else:
                seen.add(function)
                kept.append(item)
        if thinned:
            config.hook.pytest_deselected(items=thinned)
            items[:] = kept


@pytest.fixture
def float64_kept():
    """For a test that calls keras_lrp's internals (propagators, rules, recurrences) or Keras's float64
    layers directly: keeps float64 float64 on JAX / torch, as explain does (keras_lrp.backend.compute_scope;
    Keras's type promotion would demote it to float32 there). Public functions enter the scope themselves."""
    from keras_lrp.backend import compute_scope
    with compute_scope():
        yield


def data_file(relative: str) -> pathlib.Path:
    """A file of ``tests/data`` (shipped with the repository)."""
    path = DATA / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the checkout (tests/data is part of the repository).")
    return path


@pytest.fixture(scope="session")
def golden():
    return dict(np.load(data_file("fixtures/arras2017_golden.npz")))


GOLDEN_WEIGHT_KEYS = ["kernel_fw", "recurrent_kernel_fw", "bias_fw", "kernel_bw", "recurrent_kernel_bw",
                      "bias_bw", "dense_kernel", "dense_bias"]


def golden_cases(golden):
    """(name, x (T, 60), target, eps, bias_factor, scores, relevance, rest) for all 48 cases."""
    n = len([k for k in golden if k.endswith("_x")]) // 2
    for i in range(n):
        for setting in ("eps", "cons"):
            p = f"{i}_{setting}_"
            yield (p[:-1], golden[p + "x"], int(golden[p + "target"]), float(golden[p + "eps"]),
                   float(golden[p + "bias_factor"]), golden[p + "scores"], golden[p + "relevance"],
                   float(golden[p + "rest"]))


def rounding_sensitivity(fn, arrays, repeats: int = 3, seed: int = 0) -> float:
    """How much ``fn(*arrays)`` moves, as max relative error, when every input is perturbed at
    the level of float64 rounding (relative 2**-52, random signs).

    Different CPUs and BLAS builds round sums in different orders, which perturbs intermediate
    results by about that much; a case that divides by near-cancelling sums (eps = 0) amplifies
    it. Bounds derived from this measure are tight where the case is well conditioned and wide
    only where its conditioning requires it.
    """
    rng = np.random.default_rng(seed)
    ref = np.asarray(fn(*arrays))
    worst = 0.0
    for _ in range(repeats):
        moved = [a * (1 + 2.0 ** -52 * rng.standard_normal(np.shape(a))) for a in arrays]
        worst = max(worst, float(np.abs(np.asarray(fn(*moved)) - ref).max() / np.abs(ref).max()))
    return worst


def conditioned_bound(fn, arrays, floor: float = 1e-13) -> float:
    """A relative-error bound for ``fn(*arrays)`` across CPUs and BLAS builds: 16x its measured
    rounding sensitivity (observed cross-machine differences stay below 0.5x), never below ``floor``."""
    return max(floor, 16 * rounding_sensitivity(fn, arrays))
