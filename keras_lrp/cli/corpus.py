"""``keras-lrp explain --input FILE --engine ray --out-dir DIR``: a text corpus on Ray Data workers.

The sentences are tokenized and mapped to ids here; :func:`keras_lrp.distributed.explain_corpus`
does the rest (shards, resumption, input order). The relevance equals the local engine's.
"""
from __future__ import annotations

import json
import os
import sys

from . import PROG, UsageError
from ..safe_io import atomic_open, printable

__all__ = ["check_engine_args", "explain_text_corpus"]

_RAY_ONLY = ("address", "workers", "shard_size", "out_dir")


def check_engine_args(args) -> None:
    """Refuse option combinations the engine cannot serve (before anything is read)."""
    if args.engine == "local":
        given = [o for o in _RAY_ONLY if getattr(args, o) not in (None, 1, 4096)]
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')} is for --engine ray")
        return
    if args.npy or args.text is not None or not args.input:
        raise UsageError("--engine ray explains a corpus: give --input FILE (one sentence per line)")
    if not args.out_dir:
        raise UsageError("--engine ray needs --out-dir DIR (shards and out.jsonl go there; rerun to resume)")
    for opt in ("html", "png", "json"):
        if getattr(args, opt):
            raise UsageError(f"--engine ray writes DIR/out.jsonl; --{opt} is for the local engine")


def _model_files(job):
    """(model path, embeddings .npy path or None) of the explained model."""
    args = job.args
    if args.model is not None:
        if job.embeddings is None:
            return args.model, None
        path = os.path.join(args.out_dir, "embeddings.npy")
        import numpy as np
        with atomic_open(path, "wb") as f:
            np.save(f, job.embeddings, allow_pickle=False)
        return args.model, path
    from ..sst.pretrained import shipped_models_dir
    meta_path = os.path.join(shipped_models_dir(), f"{args.shipped}_bilstm.json")
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    base = os.path.dirname(meta_path)
    return (os.path.normpath(os.path.join(base, meta["model"])),
            os.path.normpath(os.path.join(base, meta["embeddings"])))


def explain_text_corpus(job, text_model, front, target, options=None) -> int:
    """Encode the sentences (streamed) as the local engine does, write ``DIR/ids.jsonl`` (the ids) and
    ``DIR/texts.jsonl`` (text, tokens, unknown and left-out words), explain the ids on Ray Data workers
    (``options``: the ``method_options``, the same on every worker) and write ``DIR/out.jsonl`` with the
    local ``--json`` lines (same fields, same order)."""
    from ..distributed import explain_corpus
    from .explain import encode_sentence, explain_kwargs, record

    args = job.args
    if front.vectorizes_inside:
        raise UsageError(f"{args.model} starts with TextVectorization: --engine ray explains models that take token "
                         "ids; use the local engine")
    os.makedirs(args.out_dir, exist_ok=True)
    ids_path = os.path.join(args.out_dir, "ids.jsonl")
    texts_path = os.path.join(args.out_dir, "texts.jsonl")
    kept = skipped = 0
    with atomic_open(ids_path, "w") as ids_file, atomic_open(texts_path, "w") as texts_file:
        for sentences in job.source.chunks(4096):
            encoded = []
            for sentence in sentences:
                e = encode_sentence(front, job.source, sentence, allow_empty=True)
                if e.words == 0:
                    skipped += 1
                    continue
                ids_file.write(json.dumps(e.ids.tolist()) + "\n")
                texts_file.write(json.dumps([sentence.text, e.tokens, e.oov.tolist(), e.dropped]) + "\n")
                encoded.append(e)
            front.warn(encoded)
            kept += len(encoded)
    if kept == 0:
        raise UsageError(f"--input {args.input}: no sentence has a token to explain")
    model_path, embeddings = _model_files(job)

    def as_cli_records(records):
        """The workers' records (input order) as the local --json lines, joined with texts.jsonl."""
        with open(texts_path, encoding="utf-8") as texts:
            for r, line in zip(records, texts):
                text, tokens, oov, dropped = json.loads(line)
                yield record(text, tokens, r["relevance"], r["scores"], r["target"], oov, dropped,
                             text_model.class_names, args)

    result = explain_corpus(model_path, ids_path, args.out_dir, address=args.address, num_workers=args.workers,
                            shard_size=args.shard_size, batch_size=args.batch_size, target=target,
                            embeddings=embeddings, max_length=front.max_length, quiet=not args.debug,
                            records=as_cli_records, **explain_kwargs(args, options))
    if not args.quiet:
        print(printable(f"{PROG}: wrote {result.n_sequences} explanations to {result.path} ({len(result.computed)} "
                        f"shards computed, {len(result.reused)} reused; skipped {skipped} sentences without tokens)"),
              file=sys.stderr)
    return 0
