"""Quiet by default (issue 22): warnings summed up per cause, TensorFlow's and Ray's logs hidden."""
import logging
import os
import subprocess
import sys
import warnings

import pytest

from keras_lrp.explainer import NonFiniteRelevanceWarning
from keras_lrp.quiet import quiet_ray, summarized_warnings


def _warn_a_run():
    for bad in (1, 2, 3):                       # one per batch, as explain() warns
        warnings.warn(NonFiniteRelevanceWarning(bad, 8, "the relevance overflowed float32"))
    warnings.warn(NonFiniteRelevanceWarning(1, 4, "the model's weights are not all finite"))
    for _ in range(3):
        warnings.warn("the same thing", UserWarning)
    warnings.warn("something else", FutureWarning)


def test_each_cause_is_reported_once_with_its_count():
    lines = []
    with summarized_warnings(report=lines.append):
        _warn_a_run()
    assert lines == ["6 explanations (in 3 calls) contain inf/NaN: the relevance overflowed float32",
                     "1 of 4 explanations contain inf/NaN: the model's weights are not all finite",
                     "the same thing (3 times)", "something else"]


def test_without_report_each_cause_is_warned_once():
    with pytest.warns(Warning) as caught:
        with summarized_warnings():
            _warn_a_run()
    assert [str(w.message) for w in caught][:2] == [
        "6 explanations (in 3 calls) contain inf/NaN: the relevance overflowed float32",
        "1 of 4 explanations contain inf/NaN: the model's weights are not all finite"]
    assert len(caught) == 4 and issubclass(caught[0].category, RuntimeWarning)


def test_warnings_are_reported_when_the_run_fails():
    lines = []
    with pytest.raises(KeyError):
        with summarized_warnings(report=lines.append):
            warnings.warn("before the failure")
            raise KeyError("x")
    assert lines == ["before the failure"]


def test_evaluate_prints_one_warning_line_after_the_tables(capsys):
    """`keras-lrp evaluate` printed one overflow RuntimeWarning per batch into its progress bar."""
    from keras_lrp.cli import main

    assert main(["evaluate", "--max-sentences", "30", "--methods", "lrp_prop", "--max-deletions", "1",
                 "--quiet"]) == 0
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("keras-lrp: warning: ") and "explanations (in " in lines[0] and \
        "contain inf/NaN" in lines[0], lines[0]
    assert "Sentences with non-finite (overflowing) relevance" in out


def test_tensorflow_starts_without_its_log_lines():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    code = ("from keras_lrp.quiet import import_tensorflow_quietly\nimport_tensorflow_quietly()\n"
            "import keras\nprint(float(keras.layers.Dense(2)(keras.ops.ones((1, 3))).numpy().sum()) != 0.5)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_quiet_ray_restores_the_logging_it_changed(monkeypatch):
    monkeypatch.delenv("RAY_DATA_LOG_LEVEL", raising=False)
    monkeypatch.setenv("RAY_BACKEND_LOG_LEVEL", "debug")
    ray_logger = logging.getLogger("ray")
    ray_logger.setLevel(logging.INFO)
    with quiet_ray() as around_init:
        assert os.environ["RAY_DATA_LOG_LEVEL"] == "ERROR" and os.environ["RAY_BACKEND_LOG_LEVEL"] == "debug"
        assert ray_logger.level == logging.ERROR and around_init is not None
    assert "RAY_DATA_LOG_LEVEL" not in os.environ and ray_logger.level == logging.INFO
    with quiet_ray(debug=True):
        assert ray_logger.level == logging.INFO
