"""The README's transfer figures: scikit-learn's digits (1,797 real 8x8 handwritten digits) as an ImageFolder.

    PYTHONPATH=. .venv/bin/python bench/transfer_digits.py [--threads 1] [--steps 500] [--batch-size 32]

Random-weight tiny BiTs from the tests (no real weights can be downloaded here), a stratified
80/20 split (seed 0). Reports, as JSON on stdout:
- linear probe (`bit train --method linear`, the tests' 32-feature tiny model and the wide
  1,024-feature one): validation accuracy, wall time with the feature cache cold and warm;
- scikit-learn's LogisticRegression on the very same features (default C = 1, and the C the
  probe chose), validation accuracy and fit time;
- fine-tuning (`--method finetune`, the wide model): the rule's 500 steps at a CPU-sized batch,
  at the rule's 128 px for these small images; validation accuracy (`bit eval` on the written
  folder) and wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="fine-tune steps (default: the rule's 500)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from clihelpers import make_checkpoint
    from transferdata import WIDE, make_trainable_checkpoint, write_digits

    from bitcli.transfer import FinetuneOptions, TrainOptions, train

    work = Path(tempfile.mkdtemp(prefix="bit-digits-"))
    os.environ["BIT_CACHE"] = str(work / "cache")
    digits = write_digits(work / "digits")
    models = {"tiny-32": make_checkpoint(work / "tiny"), "wide-1024": make_trainable_checkpoint(work / "wide", hidden_sizes=WIDE)}
    figures: dict = {"machine": os.uname().machine, "threads": args.threads, "load_average": os.getloadavg()}

    for name, base in models.items():
        row = {}
        reports = {}
        # The second run changes a hyper-parameter (the split's seed): every vector comes from the cache.
        for run, seed in (("cold", 0), ("warm", 1)):
            start = time.perf_counter()
            result = train(digits, work / f"linear-{name}-{run}", base=str(base),
                           options=TrainOptions(val_split=0.2, seed=seed, device="cpu"))
            row[f"wall_s_{run}_cache"] = round(time.perf_counter() - start, 2)
            reports[run] = result.report
        report = reports["cold"]
        row["features_s_cold"] = report["time"]["features_s"]
        row["features_s_warm"] = reports["warm"]["time"]["features_s"]
        row["fit_s"] = report["time"]["fit_s"]
        row["val_accuracy"] = report["results"]["val_accuracy"]
        row["l2"], row["selection"] = report["hyperparameters"]["l2"], report["hyperparameters"]["selection"]
        row["sklearn"] = sklearn_on_same_features(digits, base, report["hyperparameters"]["sklearn_C"])
        figures[f"linear {name}"] = row

    options = TrainOptions(method="finetune", val_split=0.2, device="cpu", batch_size=args.batch_size, steps=args.steps,
                           finetune=FinetuneOptions(workers=2))
    start = time.perf_counter()
    result = train(digits, work / "finetune", base=str(models["wide-1024"]), options=options)
    wall = time.perf_counter() - start
    report = result.report  # its validation accuracy is `bit eval`'s on the written folder
    figures["finetune wide-1024"] = {
        "steps": report["hyperparameters"]["steps"], "batch": report["hyperparameters"]["batch_size"],
        "resolution": report["hyperparameters"]["resolution"]["augmentation"],
        "val_accuracy": report["results"]["val_accuracy"], "first_loss": report["results"]["first_loss"],
        "final_loss": report["results"]["final_loss"], "wall_s": round(wall, 1),
        "step_s": report["hyperparameters"]["step_seconds"],
    }
    print(json.dumps(figures, indent=2))


def sklearn_on_same_features(digits: Path, base: Path, chosen_c: float) -> dict:
    """LogisticRegression on the probe's own cached features and split."""
    from sklearn.linear_model import LogisticRegression

    import bitcli
    from bitcli.transfer import features, linear
    from bitcli.transfer.run import prepare_data

    train_set, val_set = prepare_data(digits, val_split=0.2, seed=0)
    embedder = bitcli.Embedder(bitcli.load(str(base), device="cpu"))
    tr = features.extract(train_set.paths, embedder)
    va = features.extract(val_set.paths, embedder)
    assert tr.cached == len(train_set) and va.cached == len(val_set)  # the very same vectors
    scaler = linear.Standardizer(tr.vectors)
    out = {}
    for label, c in (("C=1 (default)", 1.0), (f"C={chosen_c:.3g} (the probe's)", chosen_c)):
        start = time.perf_counter()
        model = LogisticRegression(C=c, max_iter=10_000).fit(scaler(tr.vectors), train_set.labels)
        seconds = time.perf_counter() - start
        accuracy = float((model.predict(scaler(va.vectors)) == val_set.labels).mean())
        out[label] = {"val_accuracy": accuracy, "fit_s": round(seconds, 2)}
    return out


if __name__ == "__main__":
    main()
