"""Cross-check our JAX attacks against torchattacks (an independent PyTorch implementation).

    python experiments/crosscheck_torchattacks.py RUN_DIR --examples 1000 --out crosscheck.json

Loads a run's checkpoint (MLP, SmallCNN or WideResNet), exports it to PyTorch, checks that both
frameworks give the same logits, then runs every AutoAttack stage in both on the same
points and prints one JSON object: per stage, both robust accuracies, their difference in
percentage points and the per-example disagreements (``ours_robust_theirs_broken`` is the
count that matters: a point our attack failed to break that theirs broke). The last row
("cascade") is the worst case over the stages, i.e. AutoAttack's robust accuracy.

Needs ``pip install torch`` and ``pip install --no-deps torchattacks`` (see docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import jax
import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--checkpoint", default="best_test")
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--eps", type=float, default=None, help="default: the run's eval.attack.eps")
    parser.add_argument("--stages", default="apgd-ce,apgd-t,fab-t,square")
    parser.add_argument("--queries", type=int, default=5000, help="Square's query budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    import torch

    from nt_robust.attacks import protocols as P
    from nt_robust.export.torchattacks_check import torchattacks_correct
    from nt_robust.export import nhwc_to_nchw, to_torch
    from nt_robust.train.restore import load_run_config
    from nt_robust.train.loop import Trainer
    from nt_robust.train.state import model_variables

    config = load_run_config(args.run_dir)
    trainer = Trainer(config, args.run_dir)
    state, _ = trainer.restore(args.checkpoint)
    variables = jax.device_get(model_variables(state, use_ema=config.optim.ema_decay is not None))
    eps = args.eps if args.eps is not None else config.eval.attack.eps
    images = trainer.splits.test_images[:args.examples]
    labels = trainer.splits.test_labels[:args.examples].astype(np.int32)
    x = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)

    torch.set_num_threads(args.torch_threads)  # 2 threads beside JAX in one process contend badly here
    torch_model = to_torch(trainer.model, variables)
    apply_fn = P.ModelFn(trainer.model, "eval")
    ours_logits = np.asarray(apply_fn(variables, x[:256]))
    with torch.no_grad():
        theirs_logits = torch_model(torch.from_numpy(nhwc_to_nchw(x[:256]))).numpy()
    report: dict = {
        "run_dir": args.run_dir, "checkpoint": args.checkpoint, "model": config.model.label, "eps": eps,
        "num_examples": int(len(labels)), "seed": args.seed, "square_queries": args.queries,
        "max_abs_logit_difference": float(np.max(np.abs(ours_logits - theirs_logits))),
        "stages": [],
    }
    num_classes = trainer.splits.num_classes
    standard = {s.name: s for s in P.PROTOCOLS["autoattack-standard"].stages + P.PROTOCOLS["autoattack-2020"].stages}
    ours_all = np.ones(len(labels), bool)
    theirs_all = np.ones(len(labels), bool)
    for name in args.stages.split(","):
        # One restart, as the torchattacks counterparts (autoattack-2020 runs 5 since its version 2).
        stage = dataclasses.replace(standard[name], config=dataclasses.replace(standard[name].config, restarts=1))
        if name == "square":
            stage = dataclasses.replace(stage, config=dataclasses.replace(stage.config, num_queries=args.queries))
        protocol = P.Protocol(f"crosscheck-{name}", 0, (stage,)).at_eps(eps)
        started = time.perf_counter()
        ours = P.run_protocol(protocol, apply_fn, variables, x, labels, seed=args.seed, batch_size=1000)
        ours_seconds = time.perf_counter() - started
        ours_correct = ours.per_example["broken_by"] == P.ROBUST
        started = time.perf_counter()
        theirs_correct = torchattacks_correct(torch_model, name, x, labels, eps, seed=args.seed,
                                              num_classes=num_classes, queries=args.queries)
        theirs_seconds = time.perf_counter() - started
        ours_all &= ours_correct
        theirs_all &= theirs_correct
        report["stages"].append(_row(name, ours_correct, theirs_correct, ours_seconds, theirs_seconds))
        print(json.dumps(report["stages"][-1]), file=sys.stderr, flush=True)
    report["stages"].append(_row("cascade", ours_all, theirs_all, None, None))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as file:
            file.write(text + "\n")
    return 0


def _row(name: str, ours: np.ndarray, theirs: np.ndarray, ours_seconds: float | None,
         theirs_seconds: float | None) -> dict:
    row = {
        "stage": name,
        "ours_robust_accuracy": float(ours.mean()),
        "torchattacks_robust_accuracy": float(theirs.mean()),
        "difference_pp": round(100 * float(ours.mean() - theirs.mean()), 2),
        "ours_robust_theirs_broken": int(np.sum(ours & ~theirs)),
        "theirs_robust_ours_broken": int(np.sum(theirs & ~ours)),
    }
    if ours_seconds is not None:
        row.update(ours_seconds=round(ours_seconds, 2), torchattacks_seconds=round(theirs_seconds, 2))
    return row


if __name__ == "__main__":
    sys.exit(main())
