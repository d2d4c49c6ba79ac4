"""Attack throughput (images/s): our JAX PGD-20, APGD-CE and AutoAttack cascade vs torchattacks.

    python benchmarks/attacks.py RUN_DIR --examples 500            # prints one JSON object
    python benchmarks/attacks.py RUN_DIR --no-torch --queries 1000

Each finished part is also printed as a JSON line on stderr as it finishes (long runs on
conv nets: what finished survives a timeout).

Same model (the run's checkpoint, exported to PyTorch for torchattacks), same points,
same CPU. Our numbers exclude compilation (a warm-up call on the same shapes first) and
report it separately; torchattacks has none. The cascade runs each stage only on the
points still robust, in both frameworks (torchattacks: stage by stage on what is left).
The load average is printed because this machine is shared: compare numbers only
within one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def _timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def _progress(results: dict, key: str) -> None:
    """Each finished part as a JSON line on stderr, so that a run stopped early keeps it."""
    print(json.dumps({key: results[key]}), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--checkpoint", default="best_test")
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--queries", type=int, default=5000, help="Square's budget in the cascade")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count(),
                        help="torch intra-op threads (default: every core, as PyTorch's own default)")
    parser.add_argument("--no-library-setup", action="store_true",
                        help="skip what `nt-robust eval` sets up first (the XLA:CPU flags and the malloc tuning)")
    args = parser.parse_args(argv)

    if not args.no_library_setup:  # before the backend starts, as the CLI does
        from nt_robust.environment import configure_xla_cpu
        from nt_robust.host_memory import tune_malloc
        configure_xla_cpu()
        tune_malloc()
    from nt_robust.attacks import protocols as P
    from nt_robust.host_memory import malloc_settings
    from nt_robust.attacks.apgd import APGDConfig
    from nt_robust.train.evaluate_run import load_run_config
    from nt_robust.train.loop import Trainer
    from nt_robust.train.state import model_variables

    config = load_run_config(args.run_dir)
    trainer = Trainer(config, args.run_dir)
    state, _ = trainer.restore(args.checkpoint)
    variables = jax.device_get(model_variables(state, use_ema=config.optim.ema_decay is not None))
    eps = config.eval.attack.eps
    n = args.examples
    x = trainer.splits.test_images[:n].astype(np.float32) / 255.0
    y = trainer.splits.test_labels[:n].astype(np.int32)
    apply_fn = P.ModelFn(trainer.model, "eval")
    load_before = os.getloadavg()

    results: dict = {"model": config.model.label, "eps": eps, "examples": n, "square_queries": args.queries,
                     "jax_backend": jax.default_backend(), "cpu_count": os.cpu_count(),
                     "xla_flags": os.environ.get("XLA_FLAGS", ""), "malloc_tuned": malloc_settings()["tuned"]}
    xs, ys, key = jnp.asarray(x), jnp.asarray(y), jax.random.key(0)
    pgd20 = P.PROTOCOLS["pgd20-0.007"].at_eps(eps).stages[0].config
    # PGD-20 on every point, as torchattacks.PGD does; APGD-CE as a one-stage protocol, so
    # on the correctly classified points only, as torchattacks.APGD (AutoAttack's) does.
    run_pgd = lambda: np.asarray(P._stage_predictions(apply_fn, pgd20, variables, xs, ys, key)) == y  # noqa: E731
    apgd_ce = P.Protocol("apgd-ce", 1, (P.Stage("apgd-ce", APGDConfig(eps=eps, loss="ce")),), eps=eps)
    run_apgd = lambda: P.run_protocol(apgd_ce, apply_fn, variables, x, y, batch_size=n).per_example["broken_by"] == P.ROBUST  # noqa: E731,E501
    for name, run in (("pgd20", run_pgd), ("apgd_ce", run_apgd)):
        _, compile_seconds = _timed(run)
        robust, seconds = _timed(run)
        results[f"ours_{name}"] = {"images_per_s": round(n / seconds, 1), "seconds": round(seconds, 2),
                                   "first_call_seconds_incl_compile": round(compile_seconds, 2),
                                   "robust_accuracy": float(np.mean(robust))}
        _progress(results, f"ours_{name}")

    protocol = P.PROTOCOLS["autoattack-standard"].at_eps(eps)
    stages = tuple(dataclasses.replace(s, config=dataclasses.replace(s.config, num_queries=args.queries))
                   if s.name == "square" else s for s in protocol.stages)
    protocol = dataclasses.replace(protocol, stages=stages)
    first, compile_seconds = _timed(lambda: P.run_protocol(protocol, apply_fn, variables, x, y, batch_size=n))
    second, seconds = _timed(lambda: P.run_protocol(protocol, apply_fn, variables, x, y, batch_size=n))
    results["ours_cascade"] = {"images_per_s": round(n / seconds, 1), "seconds": round(seconds, 2),
                               "first_call_seconds_incl_compile": round(compile_seconds, 2),
                               "robust_accuracy": second.summary()["robust_accuracy"],
                               "stage_seconds": second.settings["stage_seconds"]}
    _progress(results, "ours_cascade")

    if not args.no_torch:
        import torch

        from nt_robust.attacks.torchattacks_check import torchattacks_attack
        from nt_robust.export import nhwc_to_nchw, to_torch
        torch.set_num_threads(args.torch_threads)
        torch_model = to_torch(trainer.model, variables)
        tx, ty = torch.from_numpy(nhwc_to_nchw(x)), torch.from_numpy(y.astype(np.int64))
        import torchattacks

        attacks = {"pgd20": torchattacks.PGD(torch_model, eps=eps, alpha=pgd20.step_size, steps=pgd20.num_steps,
                                             random_start=True),
                   "apgd_ce": torchattacks_attack(torch_model, "apgd-ce", eps)}
        for name, attack in attacks.items():
            adversarial, seconds = _timed(lambda attack=attack: attack(tx, ty))
            with torch.no_grad():
                accuracy = float((torch_model(adversarial).argmax(1) == ty).float().mean())
            results[f"torchattacks_{name}"] = {"images_per_s": round(n / seconds, 1), "seconds": round(seconds, 2),
                                               "torch_threads": torch.get_num_threads(), "robust_accuracy": accuracy}
            _progress(results, f"torchattacks_{name}")

        torch_stage_seconds: dict[str, float] = {}

        def torch_cascade():
            with torch.no_grad():
                robust = torch_model(tx).argmax(1) == ty
            for name in ("apgd-ce", "apgd-t", "fab-t", "square"):
                idx = torch.nonzero(robust).flatten()
                if len(idx) == 0:
                    break
                started = time.perf_counter()
                adv = torchattacks_attack(torch_model, name, eps, queries=args.queries)(tx[idx], ty[idx])
                torch_stage_seconds[name] = round(time.perf_counter() - started, 3)
                print(json.dumps({"torchattacks_stage_seconds": {name: torch_stage_seconds[name]}}), file=sys.stderr,
                      flush=True)
                with torch.no_grad():
                    robust[idx] = torch_model(adv).argmax(1) == ty[idx]
            return float(robust.float().mean())

        accuracy, seconds = _timed(torch_cascade)
        results["torchattacks_cascade"] = {"images_per_s": round(n / seconds, 1), "seconds": round(seconds, 2),
                                           "robust_accuracy": accuracy, "stage_seconds": torch_stage_seconds}
        for name in ("pgd20", "apgd_ce", "cascade"):
            results[f"ours_over_torchattacks_{name}"] = round(
                results[f"ours_{name}"]["images_per_s"] / results[f"torchattacks_{name}"]["images_per_s"], 3)
    results["load_average_before"] = [round(v, 2) for v in load_before]
    results["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
