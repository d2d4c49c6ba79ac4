"""Attack throughput (images/s): our JAX PGD-20, APGD-CE and AutoAttack cascade vs torchattacks.

    python benchmarks/attacks.py RUN_DIR --examples 500            # prints one JSON object
    python benchmarks/attacks.py RUN_DIR --no-torch --queries 1000
    python benchmarks/attacks.py RUN_DIR --examples 50 --queries 1000 --rounds 3   # paired ratios

Each finished part is also printed as a JSON line on stderr as it finishes (long runs on
conv nets: what finished survives a timeout).

Same model (the run's checkpoint, exported to PyTorch for torchattacks), same points,
same CPU. Both sides make one untimed call first (ours compiles there, torch sets up its
kernels) and report it as ``first_call_seconds``. The cascade runs each stage only on the
points still robust, in both frameworks (torchattacks: stage by stage on what is left).
``--rounds R`` times each attack R times per side, ours and torchattacks alternating, and
gives the speed ratio as a paired geometric mean with a 95 % interval over rounds; seconds
are medians over rounds. The load average is printed because this machine is shared:
compare numbers only within one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import paired_ratio  # noqa: E402  (the benchmarks' paired-ratio helper)


def _timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def _progress(results: dict, key: str) -> None:
    """Each finished part as a JSON line on stderr, so that a run stopped early keeps it."""
    print(json.dumps({key: results[key]}), file=sys.stderr, flush=True)


def _torchattacks_parts(model, variables, x, y, eps, pgd20, args) -> dict:
    """torchattacks' PGD-20, APGD-CE and AutoAttack-standard cascade on the exported model,
    each a call returning (robust accuracy, extra fields)."""
    import torch
    import torchattacks

    from nt_robust.export.torchattacks_check import torchattacks_attack
    from nt_robust.export import nhwc_to_nchw, to_torch

    torch.set_num_threads(args.torch_threads)
    torch_model = to_torch(model, variables)
    tx, ty = torch.from_numpy(nhwc_to_nchw(x)), torch.from_numpy(y.astype(np.int64))

    def accuracy_after(attack):
        adversarial = attack(tx, ty)
        with torch.no_grad():
            return float((torch_model(adversarial).argmax(1) == ty).float().mean()), {
                "torch_threads": torch.get_num_threads()}

    def cascade():  # stage by stage on the points still robust, as AutoAttack runs it
        stage_seconds: dict[str, float] = {}
        with torch.no_grad():
            robust = torch_model(tx).argmax(1) == ty
        for name in ("apgd-ce", "apgd-t", "fab-t", "square"):
            idx = torch.nonzero(robust).flatten()
            if len(idx) == 0:
                break
            adv, seconds = _timed(lambda name=name, idx=idx: torchattacks_attack(
                torch_model, name, eps, queries=args.queries)(tx[idx], ty[idx]))
            stage_seconds[name] = round(seconds, 3)
            with torch.no_grad():
                robust[idx] = torch_model(adv).argmax(1) == ty[idx]
        return float(robust.float().mean()), {"stage_seconds": stage_seconds}

    pgd = torchattacks.PGD(torch_model, eps=eps, alpha=pgd20.step_size, steps=pgd20.num_steps, random_start=True)
    return {"pgd20": lambda: accuracy_after(pgd),
            "apgd_ce": lambda: accuracy_after(torchattacks_attack(torch_model, "apgd-ce", eps)),
            "cascade": cascade}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--checkpoint", default="best_test")
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--queries", type=int, default=5000, help="Square's budget in the cascade")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--attacks", default="pgd20,apgd_ce,cascade",
                        help="which to time, comma-separated, of pgd20, apgd_ce and cascade")
    parser.add_argument("--rounds", type=int, default=1,
                        help="timed calls per side, ours and torchattacks alternating; from 2 on, a paired ratio "
                             "with a 95%% interval (benchmarks/harness.py's paired_ratio)")
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count(),
                        help="torch intra-op threads (default: every core, as PyTorch's own default)")
    parser.add_argument("--no-library-setup", action="store_true",
                        help="skip what `nt-robust eval` sets up first (the XLA:CPU flags and the malloc tuning)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    attacks = [name.strip() for name in args.attacks.split(",") if name.strip()]
    if not attacks or set(attacks) - {"pgd20", "apgd_ce", "cascade"}:
        parser.error(f"--attacks takes pgd20, apgd_ce and cascade, got {args.attacks!r}")

    if not args.no_library_setup:  # before the backend starts, as the CLI does
        from nt_robust.cpu.setup import configure_xla_cpu
        from nt_robust.cpu.malloc import tune_malloc
        configure_xla_cpu()
        tune_malloc()
    from nt_robust.attacks import protocols as P
    from nt_robust.cpu.malloc import malloc_settings
    from nt_robust.cpu.ops import resolve_conv_impl, resolve_dense_impl
    from nt_robust.attacks.apgd import APGDConfig
    from nt_robust.train.restore import load_run_config
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
                     "rounds": args.rounds, "conv_impl": resolve_conv_impl(config.model.conv_impl),
                     "dense_impl": resolve_dense_impl(config.model.dense_impl) if config.model.arch == "mlp" else None,
                     "jax_backend": jax.default_backend(), "cpu_count": os.cpu_count(),
                     "xla_flags": os.environ.get("XLA_FLAGS", ""), "malloc_tuned": malloc_settings()["tuned"]}
    xs, ys, key = jnp.asarray(x), jnp.asarray(y), jax.random.key(0)
    pgd20 = P.PROTOCOLS["pgd20-0.007"].at_eps(eps).stages[0].config
    protocol = P.PROTOCOLS["autoattack-standard"].at_eps(eps)
    protocol = dataclasses.replace(protocol, stages=tuple(
        dataclasses.replace(s, config=dataclasses.replace(s.config, num_queries=args.queries))
        if s.name == "square" else s for s in protocol.stages))
    apgd_ce = P.Protocol("apgd-ce", 1, (P.Stage("apgd-ce", APGDConfig(eps=eps, loss="ce")),), eps=eps)

    def ours_protocol(protocol):
        result = P.run_protocol(protocol, apply_fn, variables, x, y, batch_size=n)
        return result.summary()["robust_accuracy"], {"stage_seconds": result.settings["stage_seconds"]}

    # PGD-20 on every point, as torchattacks.PGD does; APGD-CE as a one-stage protocol, so
    # on the correctly classified points only, as torchattacks.APGD (AutoAttack's) does.
    ours = {"pgd20": lambda: (float(np.mean(np.asarray(P._stage_predictions(apply_fn, pgd20, variables, xs, ys,
                                                                                key)) == y)), {}),
            "apgd_ce": lambda: ours_protocol(apgd_ce),
            "cascade": lambda: ours_protocol(protocol)}
    theirs = {} if args.no_torch else _torchattacks_parts(trainer.model, variables, x, y, eps, pgd20, args)

    ours = {name: run for name, run in ours.items() if name in attacks}
    for name, run_ours in ours.items():
        # An untimed first call on each side: ours compiles every shape the timed calls meet,
        # torch sets up its kernels for them (its first call was up to 10x slower).
        first_seconds = {side: _timed(run)[1] for side, run in (("ours", run_ours), ("torchattacks", theirs.get(name)))
                         if run is not None}
        times: dict[str, list[float]] = {"ours": [], "torchattacks": []}
        last: dict[str, tuple] = {}
        for _ in range(args.rounds):  # alternating, so that a slow spell of the machine hits both
            for side, run in (("ours", run_ours), ("torchattacks", theirs.get(name))):
                if run is not None:
                    last[side], seconds = _timed(run)
                    times[side].append(seconds)
        for side, seconds in times.items():
            if seconds:
                accuracy, extra = last[side]
                median = statistics.median(seconds)
                results[f"{side}_{name}"] = {"images_per_s": round(n / median, 1), "seconds": round(median, 2),
                                             "seconds_per_round": [round(v, 2) for v in seconds],
                                             "robust_accuracy": accuracy, **extra,
                                             "first_call_seconds": round(first_seconds[side], 2)}
        if times["torchattacks"]:
            results[f"ours_over_torchattacks_{name}"] = (
                paired_ratio(times["ours"], times["torchattacks"]) if args.rounds >= 2 else
                round(times["torchattacks"][0] / times["ours"][0], 3))
        for key_name in (f"ours_{name}", f"torchattacks_{name}", f"ours_over_torchattacks_{name}"):
            if key_name in results:
                _progress(results, key_name)
    results["load_average_before"] = [round(v, 2) for v in load_before]
    results["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
