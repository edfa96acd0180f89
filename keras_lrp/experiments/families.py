"""One faithfulness benchmark across model families: the shipped SST Bi-LSTM and freshly trained SST
models of other families (:data:`keras_lrp.sst.train.ARCHITECTURES`), each evaluated by
:func:`~keras_lrp.experiments.word_deletion.sst_word_deletion` (word deletion, AOPC, deletion /
insertion AUC, time per sentence) with every method.

:func:`run_families` trains each family with the package's own training code
(:func:`keras_lrp.sst.train.train`, seeded; the seed, the settings and the accuracies are recorded),
evaluates it, and writes one table per family (``families_<family>.md`` / ``.json``), a summary
table (``families.md``) and a summary plot (``families.png``: AOPC against explain time per sentence,
one point per method and family). ``bench/evaluate_families.py`` is its command line.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

from ._common import LABELS, STYLES, check_int, check_methods, inline_figure

__all__ = ["FAMILIES", "BENCHMARK_METHODS", "FamilyResult", "run_families", "summary_table", "summary_plot"]

#: "shipped" (the shipped SST Bi-LSTM) and the families :func:`keras_lrp.sst.train.train` builds
FAMILIES = ("shipped", "bilstm", "bigru", "cnn", "bilstm_attention", "transformer")
#: the methods compared
BENCHMARK_METHODS = ("lrp", "gi", "sa", "ig", "occlusion", "shapley", "random")


@dataclass
class FamilyResult:
    """One family's model and its evaluation (``result``: a WordDeletionResult)."""

    family: str
    metadata: dict
    result: object
    train_seconds: Optional[float] = None
    settings: Dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict:
        meta = {k: self.metadata.get(k) for k in ("sentence_accuracy", "settings", "best_epoch", "stopped",
                                                   "sentences", "train_seconds")}
        return {"family": self.family, "model": meta, "evaluation": self.result.to_dict(),
                "settings": dict(self.settings)}


def run_families(data_dir: Union[str, os.PathLike], out_dir: Union[str, os.PathLike], *,
                 families: Sequence[str] = FAMILIES, methods: Union[str, Sequence[str]] = BENCHMARK_METHODS,
                 max_sentences: Optional[int] = None, train_sentences: Optional[int] = None, epochs: int = 5,
                 max_minutes: Optional[float] = None, emb_dim: int = 60, units: int = 60, phrases: bool = True,
                 seed: int = 1234, max_deletions: int = 5, batch_size: int = 256, shipped: str = "sst5",
                 progress: bool = True) -> List[FamilyResult]:
    """Train (except "shipped") and evaluate every family on the SST files in ``data_dir``; write the
    tables, JSON and plot to ``out_dir`` (trained models under ``out_dir/models``).

    ``train_sentences`` / ``phrases`` / ``epochs`` / ``max_minutes`` / ``emb_dim`` / ``units`` / ``seed``
    go to :class:`keras_lrp.sst.train.TrainConfig` (``train_sentences``: its ``max_sentences``);
    ``max_sentences`` evaluates a seeded random subset of the test sentences.
    """
    from ..sst.pretrained import load_pretrained
    from ..sst.train import TrainConfig, train
    from .word_deletion import sst_word_deletion

    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise ValueError(f"families must be among {FAMILIES}; got {list(families)}")
    methods = check_methods(methods, BENCHMARK_METHODS)
    for name, value, low in (("epochs", epochs, 1), ("seed", seed, 0), ("max_deletions", max_deletions, 0)):
        check_int(name, value, low)
    classes = 5 if shipped == "sst5" else 2
    configs = {f: TrainConfig(os.fspath(data_dir), os.path.join(os.fspath(out_dir), "models", f), classes=classes,
                              epochs=epochs, max_minutes=max_minutes, emb_dim=emb_dim, units=units, phrases=phrases,
                              max_sentences=train_sentences, seed=seed, architecture=f, verbose=progress)
               for f in families if f != "shipped"}     # every setting checked before any training
    test = os.path.join(os.fspath(data_dir), "test.txt")
    if not os.path.isfile(test):
        raise FileNotFoundError(f"no test.txt in {os.fspath(data_dir)}; give the folder of the SST files")
    os.makedirs(out_dir, exist_ok=True)
    results = []
    for family in families:
        started = time.perf_counter()
        if family == "shipped":
            model, seconds = load_pretrained(shipped), None
        else:
            trained = train(configs[family], command=f"keras_lrp.experiments.families ({family})")
            model, seconds = load_pretrained(trained.metadata_path), time.perf_counter() - started
        result = sst_word_deletion(model, test, max_sentences=max_sentences, subset_seed=seed, methods=methods,
                                   max_deletions=max_deletions, batch_size=batch_size, seed=seed, progress=progress)
        done = FamilyResult(family, model.metadata, result, seconds,
                            dict(max_sentences=max_sentences, train_sentences=train_sentences, epochs=epochs,
                                 seed=seed, phrases=phrases))
        results.append(done)
        _write_family(out_dir, done)
    from ..safe_io import atomic_write
    from ..visualize import save_png

    atomic_write(os.path.join(out_dir, "families.md"), summary_table(results))
    save_png(summary_plot(results), os.path.join(out_dir, "families.png"), dpi=110)
    return results


def _describe(r: FamilyResult) -> str:
    acc = r.metadata.get("sentence_accuracy", {})
    settings = r.metadata.get("settings", {})
    trained = ("shipped model" if r.family == "shipped" else
               f"trained here: seed {settings.get('seed')}, {settings.get('epochs')} epochs max, best epoch "
               f"{r.metadata.get('best_epoch')}, {r.metadata.get('sentences', {}).get('train')} training sentences"
               f"{' (all their phrases)' if settings.get('phrases') else ''}")
    return (f"{r.family} ({trained}); sentence accuracy: "
            + ", ".join(f"{k} {100 * v:.1f} %" for k, v in acc.items()))


def _write_family(out_dir, r: FamilyResult) -> None:
    from ..safe_io import atomic_write

    stem = os.path.join(os.fspath(out_dir), f"families_{r.family}")
    evaluated = r.result.n_correct + r.result.n_misclassified
    atomic_write(stem + ".md", f"# {_describe(r)}\n\n{evaluated} test sentences evaluated.\n\n{r.result.table()}\n")
    atomic_write(stem + ".json", json.dumps(r.to_dict(), indent=1))


def summary_table(results: Sequence[FamilyResult]) -> str:
    """Markdown: one row per family and method, AOPC, deletion / insertion AUC, ms per sentence, and
    the accuracy after 1 and 3 deletions on the initially correct sentences."""
    lines = ["# Faithfulness across model families", "",
             "AOPC (higher = more faithful), deletion AUC (lower), insertion AUC (higher), explain time per "
             "sentence, and the accuracy on the initially correct sentences after 1 and 3 most-relevant words "
             "are deleted (lower = more faithful).", ""]
    for r in results:
        lines += [f"**{_describe(r)}**", "",
                  "| method | AOPC | deletion AUC | insertion AUC | ms / sentence | acc. after 1 | acc. after 3 |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        w = r.result
        for m in w.methods:
            after = [f"{100 * w.correct[m][k]:.1f}" if k < len(w.correct[m]) else "–" for k in (1, 3)]
            lines.append(f"| {LABELS.get(m, m)} | {w.aopc[m]:.4f} | {w.deletion_auc[m]:.4f} | {w.insertion_auc[m]:.4f} "
                         f"| {1000 * w.seconds_per_sentence[m]:.2f} | {after[0]} | {after[1]} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def summary_plot(results: Sequence[FamilyResult]):
    """AOPC against explain time per sentence (log scale), one point per method and family."""
    fig = inline_figure(figsize=(10.5, 5.0), layout="constrained")
    ax = fig.subplots()
    markers = "osD^vP*"
    for i, r in enumerate(results):
        for m in r.result.methods:
            if m == "random":
                continue
            seconds = max(r.result.seconds_per_sentence[m], 1e-6)
            ax.scatter(1000 * seconds, r.result.aopc[m], marker=markers[i % len(markers)],
                       color=STYLES.get(m, {}).get("color", "k"), s=45,
                       label=f"{r.family}: {LABELS.get(m, m)}")
    ax.set_xscale("log")
    ax.set_xlabel("explain time per sentence (ms, log scale)")
    ax.set_ylabel("AOPC (higher = more faithful)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig
