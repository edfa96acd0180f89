"""Faithfulness across model families: the shipped SST-5 Bi-LSTM and freshly trained SST-5 models (Bi-LSTM,
Bi-GRU, CNN, Bi-LSTM + attention, transformer encoder), each evaluated with LRP, GI, SA, IG, occlusion,
Shapley sampling and random: word deletion, AOPC, deletion / insertion AUC, explain time per sentence.

    python bench/evaluate_families.py                               # everything (hours on 2 CPU cores)
    python bench/evaluate_families.py --train-sentences 2000 --no-phrases --epochs 3 --max-sentences 200

Writes docs/evaluation/families.{md,png} and families_<family>.{md,json} (or --out-dir); the trained
models go to <out-dir>/models/<family>/. See keras_lrp.experiments.families.
"""
import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    from keras_lrp.experiments.families import BENCHMARK_METHODS, FAMILIES

    p = argparse.ArgumentParser(prog="evaluate_families.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.path.join(ROOT, "tests", "data", "sst"), help="folder of the SST files")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "docs", "evaluation"))
    p.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {','.join(FAMILIES)}")
    p.add_argument("--methods", default=",".join(BENCHMARK_METHODS))
    p.add_argument("--max-sentences", type=int, default=None, help="evaluate a seeded subset of the test set")
    p.add_argument("--train-sentences", type=int, default=None, help="train on the first N trees of each split")
    p.add_argument("--no-phrases", dest="phrases", action="store_false", help="train on whole sentences only")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--max-minutes", type=float, default=None, help="training time budget per family")
    p.add_argument("--emb-dim", type=int, default=60)
    p.add_argument("--units", type=int, default=60)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    from keras_lrp.experiments.families import run_families

    try:
        results = run_families(args.data, args.out_dir, families=[f for f in args.families.split(",") if f],
                               methods=args.methods, max_sentences=args.max_sentences,
                               train_sentences=args.train_sentences, epochs=args.epochs, max_minutes=args.max_minutes,
                               emb_dim=args.emb_dim, units=args.units, phrases=args.phrases, seed=args.seed,
                               progress=not args.quiet)
    except (ValueError, FileNotFoundError) as err:
        p.error(str(err))
    print(open(os.path.join(args.out_dir, "families.md"), encoding="utf-8").read())
    print(f"wrote families.md, families.png and {len(results)} families_<family>.md/.json to {args.out_dir}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
