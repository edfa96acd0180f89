import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

TESTS = pathlib.Path(__file__).resolve().parent
ROOT = TESTS.parent
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(ROOT))   # test this checkout's keras_lrp, whatever else is installed


def shared_file(relative: str) -> pathlib.Path:
    path = SHARED / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the tests need the shared material beside the repo (../shared).")
    return path


@pytest.fixture(scope="session")
def golden():
    return dict(np.load(shared_file("fixtures/arras2017_golden.npz")))


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
