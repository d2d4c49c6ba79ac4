"""Evaluate a finished (or running) run's checkpoint with any attack or protocol::

    result = evaluate_run("runs/quick_fmnist", attack="cw20")                 # best_val checkpoint
    result = evaluate_run("runs/quick_fmnist", protocol="autoattack-standard", examples=1000)

ε is always the run's own ``eval.attack.eps`` unless ``eps`` (``--eps``) or
``--set eval.attack.eps=…`` says otherwise, for the run's attack, every attack preset and
every protocol alike (a preset or protocol fixes the steps, not the threat model). The
result records the ε used (``eps``) and where it came from (``eps_source``). Every
override either takes effect or is refused: ``eval.attack.*`` fields apply on top of a
preset; a protocol's stages fix their own settings, so there only ε, ``eval.batch_size``,
``eval.bn_mode`` and ``eval.dtype`` apply.

The checkpoint defaults to ``best_val`` (selected on held-out validation robust
accuracy); ``best_test`` (selected on the test set: the paper's protocol, optimistic when
evaluated on test) and ``latest`` are there too. Every result says which rule picked it
(``checkpoint_selection``).

Writes ``RUN_DIR/eval/<checkpoint>_<split>_<attack>_eps<ε>_n<N>.json`` (summary, exact
ε, attack settings) and ``.npz`` (per-example arrays) atomically, keyed by what they
cover: N is the number of examples actually evaluated (``examples`` beyond the split is
clipped, with a warning), and settings changed with ``--set`` add ``_set-<hash>``. A
protocol (see :mod:`nt_robust.attacks.protocols`) writes
``<checkpoint>_<split>_<protocol>_eps<ε>_n<N>.json`` / ``.npz``; while it runs, every
finished batch is saved under ``….partial/``, so an interrupted evaluation resumes where it
stopped, and a finished one with the same settings is returned without recomputing.
Sanity flags (:mod:`nt_robust.attacks.sanity`) are computed on the first 64 points,
printed, and stored; when bfloat16 took part (``model.dtype`` or ``eval.dtype``), so is
``attack_precision_weaker``. The model is attacked in ``eval.dtype`` (float32 unless set).

The checkpoint is restored by :func:`nt_robust.train.restore.restore_run`: no Trainer, no
optimizer step, and a WAR run's reference run is never read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

from nt_robust import storage
from nt_robust.attacks import CW20, FGSM, PGD20, TRADES_TRAIN, AttackConfig
from nt_robust.attacks.config import RELATIVE_STEP, at_threat_model
from nt_robust.attacks.protocols import ROBUST, BatchStore, ModelFn, get_protocol, run_protocol
from nt_robust.attacks.sanity import attack_precision_flag, format_flags, sanity_flags
from nt_robust.config import ConfigError, ExactFloat, apply_overrides, build, parse_override
from nt_robust.metrics import summarize
from nt_robust.train.config import ExperimentConfig
from nt_robust.train.splits import prepare_splits
from nt_robust.train.evaluation import Evaluator
from nt_robust.train.restore import SELECTION_RULES, RestoredRun, read_run_config, restore_run, selection_rule
from nt_robust.train.sharding import data_mesh, replicated_sharding

# Attack presets: the steps, loss and start of each; their ε (0.031 here) is a placeholder:
# evaluate_run always replaces it with the run's eval.attack.eps (or --eps) and the norm with
# the run's eval.attack.norm (see preset_at_eps). Steps: the ε-relative presets step
# STEP_FRACTIONS[name]·ε (pgd20, cw20: ε/4, RELATIVE_STEP; fgsm: ε); the paper's and TRADES'
# absolute steps are kept under their own names, as the ℓ∞ settings they were published at.
ATTACKS: dict[str, AttackConfig] = {
    "pgd20": PGD20,
    "cw20": CW20,
    "fgsm": FGSM(PGD20.eps),
    "pgd20-paper": PGD20,                                      # step 0.007 at ε 0.031
    "pgd20-0.003": dataclasses.replace(PGD20, step_size=0.003),  # the paper's second PGD-20
    "cw20-paper": CW20,                                        # step 0.007 at ε 0.031
    "trades-train": TRADES_TRAIN,                              # TRADES' 10 steps of 0.007, KL
}
STEP_FRACTIONS: dict[str, float] = {"pgd20": RELATIVE_STEP, "cw20": RELATIVE_STEP, "fgsm": 1.0}
"""Presets whose step is a fraction of ε; the others keep their absolute step and are ℓ∞ only."""

# eval.* settings that only steer per-epoch evaluation during training (never evaluate_run).
_TRAINING_ONLY = {"eval.val_examples": "use --examples N", "eval.test_examples": "use --examples N",
                  "eval.every_epochs": "it only applies while training"}
# What a protocol takes from the config: its stages fix everything else.
_PROTOCOL_SETTINGS = ("eval.attack.eps", "eval.attack.norm", "eval.batch_size", "eval.bn_mode", "eval.dtype")


def preset_at_eps(name: str, eps: float, norm: str = "linf") -> AttackConfig:
    """Attack preset ``name`` at radius ``eps`` in ``norm``: step ``STEP_FRACTIONS[name]·ε``
    for the relative presets (FGSM: ε), the preset's own step otherwise. An absolute-step
    preset is ℓ∞ (its step was chosen for ℓ∞ ε = 0.031) and is refused for another norm."""
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; choose one of {sorted(ATTACKS)}")
    fraction = STEP_FRACTIONS.get(name)
    if fraction is None and norm != ATTACKS[name].norm:
        relative = sorted(STEP_FRACTIONS)
        raise ConfigError(f"attack preset {name!r} is the published {ATTACKS[name].norm} setting (absolute step "
                          f"{ATTACKS[name].step_size} at eps {ATTACKS[name].eps}); the run's norm is {norm!r}: "
                          f"use one of {relative}, whose steps scale with eps")
    return at_threat_model(ATTACKS[name], eps, norm, fraction)


def protocol_result_stem(run_dir: str | Path, checkpoint: str, split: str, protocol: str, eps: float,
                         num_examples: int | None = None, variant: str = "") -> Path:
    """Where a protocol's result lives: ``RUN_DIR/eval/<checkpoint>_<split>_<protocol>_eps<ε>_n<N>``
    (+ ``.json`` / ``.npz``; built by hand because with_suffix would cut "eps0.1" at its dot).
    ``num_examples`` None: the name results had before they were keyed by their size."""
    size = "" if num_examples is None else f"_n{int(num_examples)}"
    return Path(run_dir) / "eval" / f"{checkpoint}_{split}_{protocol}_eps{float(eps)!r}{size}{variant}"


def attack_result_stem(run_dir: str | Path, checkpoint: str, split: str, attack_name: str, eps: float,
                       num_examples: int, variant: str = "") -> Path:
    """Where an attack evaluation lives: ``RUN_DIR/eval/<checkpoint>_<split>_<attack>_eps<ε>_n<N>``."""
    return (Path(run_dir) / "eval"
            / f"{checkpoint}_{split}_{attack_name}_eps{float(eps)!r}_n{int(num_examples)}{variant}")


def _variant(settings: list[tuple[list[str], Any]]) -> str:
    """``_set-<hash>`` for settings changed with --set (besides ε, which is in the name)."""
    if not settings:
        return ""
    text = json.dumps(sorted((".".join(k), v) for k, v in settings), default=str)
    return "_set-" + hashlib.sha256(text.encode()).hexdigest()[:8]


SANITY_POINTS = 64


def _sanity(run: RestoredRun, variables: Any, images: np.ndarray, labels: np.ndarray, eps: float, seed: int,
            bn_mode: str, result: Any = None, show: bool = True, norm: str = "linf",
            reported: np.ndarray | None = None, attacks: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """The sanity flags on the first SANITY_POINTS points; ``reported``: the evaluation's
    per-point robust (bool) over all its points (compared with the sanity PGD on the first ones)."""
    x = images[:SANITY_POINTS]
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    flags = sanity_flags(ModelFn(run.eval_model, bn_mode), variables, x, labels[:SANITY_POINTS],
                         jax.random.key(seed), eps, bn_mode=bn_mode, result=result, norm=norm,
                         reported=None if reported is None else np.asarray(reported)[:SANITY_POINTS],
                         attacks=attacks)
    if "bfloat16" in (run.config.model.dtype, run.config.eval.dtype):  # low precision took part
        flags.append(attack_precision_flag(run.config.model, run.num_classes, variables, x,
                                           labels[:SANITY_POINTS], jax.random.key(seed),
                                           at_threat_model(PGD20, eps, norm, RELATIVE_STEP), bn_mode))
    if show:
        print("sanity checks:\n" + format_flags(flags), file=sys.stderr, flush=True)  # stdout: the JSON
    return [f.to_dict() for f in flags]


def _parse_overrides(overrides: list[str] | tuple[str, ...], protocol: str | None) -> list[tuple[list[str], Any]]:
    """Parse and vet ``--set`` overrides: each must take effect on this evaluation or is refused."""
    parsed = []
    for text in overrides:
        keys, value = parse_override(text)
        dotted = ".".join(keys)
        if keys[0] != "eval":
            raise ConfigError(f"eval may only override eval.* settings (the model must match the "
                              f"checkpoint), got {text!r}")
        if dotted in _TRAINING_ONLY:
            raise ConfigError(f"--set {text} has no effect on `nt-robust eval` ({_TRAINING_ONLY[dotted]})")
        if keys[:2] == ["eval", "attack"] and len(keys) != 3:
            raise ConfigError(f"--set {text}: set one attack field at a time, e.g. eval.attack.eps=0.1")
        if protocol is not None and dotted not in _PROTOCOL_SETTINGS:
            raise ConfigError(f"--set {text} does not apply to protocol {protocol!r}: its stages fix their own "
                              f"steps, restarts and losses (nt_robust.attacks.protocols); a protocol takes only "
                              f"{', '.join(_PROTOCOL_SETTINGS)} (or --eps / --batch-size). For other attack "
                              f"settings use --attack or the run's own attack (no --protocol)")
        parsed.append((keys, value))
    return parsed


def _resolve_attack(run_attack: AttackConfig, preset: str | None, parsed: list[tuple[list[str], Any]],
                    eps: float | None) -> tuple[AttackConfig, str]:
    """The attack to run and where its ε came from: the run's attack or ``preset`` at the
    run's ε, then every ``eval.attack.*`` override, then ``eps``."""
    fields = {keys[2]: value for keys, value in parsed if keys[:2] == ["eval", "attack"]}
    run_eps = ExactFloat(run_attack.eps, run_attack.eps_text) if run_attack.eps_text else run_attack.eps
    norm = fields.get("norm", run_attack.norm)
    start = run_attack if preset is None else preset_at_eps(preset, run_eps, norm)
    data = {**start.to_dict(), **fields}
    if eps is not None:
        if "eps" in fields and build(AttackConfig, {**start.to_dict(), "eps": fields["eps"]}).eps != eps:
            raise ConfigError(f"--eps {eps!r} and --set eval.attack.eps={fields['eps']!r} disagree: give one")
        data["eps"] = eps
    if preset in STEP_FRACTIONS and "step_size" not in fields:
        if STEP_FRACTIONS[preset] == 1.0:
            data["step_size"] = data["eps"]   # FGSM steps ε, whichever ε that is (its text too: "8/255")
        else:
            attack = build(AttackConfig, {**data, "step_size": 0.0}, "eval.attack")   # ε as built (exact)
            data["step_size"] = STEP_FRACTIONS[preset] * attack.eps  # the step scales with the ε
    attack = build(AttackConfig, data, "eval.attack")
    source = ("--eps" if eps is not None else "--set eval.attack.eps" if "eps" in fields
              else "the run's eval.attack.eps")
    return attack, source


def _clip_examples(examples: int | None, available: int, split: str, progress: bool) -> int:
    if examples is not None and examples < 1:
        raise ConfigError(f"--examples must be at least 1 (an accuracy of no examples is undefined), got {examples}")
    if available == 0:
        raise ConfigError(f"the {split} split has no examples (data.val_size = 0?): evaluate --split test")
    if examples is not None and examples > available:
        message = (f"--examples {examples} but the {split} split has only {available} examples: "
                   f"evaluating {available}")
        print(f"warning: {message}", file=sys.stderr, flush=True)
    return available if examples is None else min(examples, available)


def _selected_epoch(record: dict[str, Any], checkpoint: str) -> int | None:
    progress = record.get("progress", {})
    if checkpoint == "latest":
        return progress.get("epoch")
    best = progress.get(checkpoint)
    return best.get("epoch") if isinstance(best, dict) else None


def describe_result(result: dict[str, Any]) -> str:
    """One line with the numbers and what they mean: ε, examples, split, checkpoint rule."""
    name = result.get("protocol") or result.get("attack_name")
    rule = result.get("checkpoint_selection") or SELECTION_RULES.get(result.get("checkpoint"), "")
    epoch = f", epoch {result['epoch']}" if result.get("epoch") is not None else ""
    return (f"{name}: robust accuracy {result['robust_accuracy']:.4f}, natural {result['natural_accuracy']:.4f} "
            f"at {result.get('norm', 'linf')} eps={result.get('eps_text') or repr(result['eps'])} "
            f"({result.get('eps_source', '')}) "
            f"on {result['num_examples']} "
            f"{result['split']} examples; checkpoint {result['checkpoint']}{epoch}: {rule}")


def evaluate_run(run_dir: str | Path, checkpoint: str = "best_val", attack: str | None = None,
                 split: str = "test", examples: int | None = None, overrides: list[str] | tuple[str, ...] = (),
                 progress: bool = False, protocol: str | None = None, eps: float | None = None,
                 batch_size: int | None = None) -> dict[str, Any]:
    """Evaluate checkpoint ``checkpoint`` of ``run_dir`` on ``split``; see the module docstring.

    ``attack`` (a PGD preset) and ``protocol`` are exclusive; with neither, the run's own
    ``eval.attack``. ε is the run's ``eval.attack.eps`` for all three unless ``eps`` or an
    ``eval.attack.eps`` override says otherwise. ``batch_size`` defaults to ``eval.batch_size``.
    """
    if attack is not None and protocol is not None:
        raise ConfigError("choose either an attack preset or a protocol, not both")
    if checkpoint not in SELECTION_RULES:
        raise ConfigError(f"unknown checkpoint {checkpoint!r}; choose one of {sorted(SELECTION_RULES)}")
    if attack is not None and attack not in ATTACKS:
        raise ConfigError(f"unknown attack {attack!r}; choose one of {sorted(ATTACKS)}")
    if examples is not None and (isinstance(examples, bool) or examples < 1):
        raise ConfigError(f"--examples must be at least 1 (an accuracy of no examples is undefined), got {examples}")
    parsed = _parse_overrides(overrides, protocol)
    written = read_run_config(run_dir)   # read once: the run's own config, then with the overrides
    run_config = build(ExperimentConfig, apply_overrides(written, []))
    config = build(ExperimentConfig, apply_overrides(written, list(overrides)))  # validates every override
    attack_config, eps_source = _resolve_attack(run_config.eval.attack, attack, parsed, eps)
    eval_config = dataclasses.replace(config.eval, attack=attack_config)
    if batch_size is not None:
        eval_config = dataclasses.replace(eval_config, batch_size=batch_size)
    config = dataclasses.replace(config, eval=eval_config)
    if protocol is not None:
        try:  # fail on a bad name, or a norm the protocol is not defined for, before loading anything
            get_protocol(protocol, attack_config.eps, attack_config.norm)
        except ValueError as error:
            raise ConfigError(f"{error} (the run's eval.attack.norm is {run_config.eval.attack.norm!r})") from None
    storage.check_writable(Path(run_dir) / "eval", "eval stores its results")  # before, not after, the attack
    mesh = data_mesh()
    run = restore_run(run_dir, checkpoint, config, replicated_sharding(mesh))
    variables, record = run.variables, run.record
    splits = prepare_splits(config.data, sample_seed=config.train.seed)
    images, labels = ((splits.test_images, splits.test_labels) if split == "test"
                      else (splits.val_images, splits.val_labels))
    count = _clip_examples(examples, len(labels), split, progress)
    images, labels = images[:count], labels[:count]
    if progress:
        what = protocol or attack or "the run's eval.attack"
        print(f"evaluating {what} in {attack_config.norm} at eps={attack_config.eps_label} "
              f"({eps_source}) on {count} {split} examples, checkpoint {checkpoint}: "
              f"{selection_rule(run_dir, checkpoint)}", file=sys.stderr, flush=True)
    common = {
        "norm": attack_config.norm,
        "eps": attack_config.eps,
        "eps_text": attack_config.eps_label,   # as written ("8/255"), or the float's repr
        "eps_source": eps_source,
        "examples_requested": examples,
        "checkpoint_selection": selection_rule(run_dir, checkpoint),
        "epoch": _selected_epoch(record, checkpoint),
    }
    if protocol is not None:
        variant = "" if config.eval.bn_mode == run_config.eval.bn_mode else f"_bn-{config.eval.bn_mode}"
        variant += "" if config.eval.dtype == "float32" else f"_{config.eval.dtype}"
        variant += "" if config.eval.attack.norm == "linf" else f"_{config.eval.attack.norm}"
        return _evaluate_protocol(run, variables, run.step, images, labels, run_dir, checkpoint,
                                  split, protocol, config.eval.batch_size, progress, common, variant)
    evaluator = Evaluator(run.eval_model, config.eval, mesh, seed=config.train.seed, num_classes=run.num_classes)
    per_example = evaluator(variables, images, labels, progress=progress)
    attack_name = attack or "config"
    result = {
        **summarize(per_example),
        "run_dir": str(run_dir),
        "checkpoint": checkpoint,
        **common,
        "step": run.step,
        "split": split,
        "attack_name": attack_name,
        "attack": config.eval.attack.to_dict(),
        "overrides": list(overrides),
        "lipschitz": None if evaluator.lipschitz is None else evaluator.lipschitz.to_dict(),
        "bn_mode": config.eval.bn_mode,
        "eval_dtype": config.eval.dtype,
        "batch_size": config.eval.batch_size,
        "seed": config.train.seed,
        "sanity_flags": _sanity(run, variables, images, labels, config.eval.attack.eps,
                                config.train.seed, config.eval.bn_mode, show=progress,
                                norm=config.eval.attack.norm,
                                reported=np.asarray(per_example["adv_pred"]) == np.asarray(per_example["labels"]),
                                attacks=(config.eval.attack,)),
    }
    changed = [(k, v) for k, v in parsed if k != ["eval", "attack", "eps"]]
    if batch_size is not None:
        changed.append((["eval", "batch_size"], batch_size))
    stem = attack_result_stem(run_dir, checkpoint, split, attack_name, config.eval.attack.eps, count,
                              _variant(changed))
    storage.save_arrays(Path(f"{stem}.npz"), per_example)   # not with_suffix: "pgd20-0.003" has a dot
    storage.write_json(Path(f"{stem}.json"), result)
    return {**result, "result_file": f"{stem}.json"}


def _evaluate_protocol(run: RestoredRun, variables: Any, step: int, images: np.ndarray, labels: np.ndarray,
                       run_dir: str | Path, checkpoint: str, split: str, name: str, batch_size: int,
                       progress: bool, common: dict[str, Any], variant: str = "") -> dict[str, Any]:
    config = run.config
    protocol = get_protocol(name, config.eval.attack.eps, config.eval.attack.norm)
    fingerprint = {"protocol": protocol.to_dict(), "checkpoint": checkpoint, "step": step, "split": split,
                   "num_examples": int(len(labels)), "seed": config.train.seed, "batch_size": batch_size,
                   "bn_mode": config.eval.bn_mode,
                   **({} if config.eval.dtype == "float32" else {"dtype": config.eval.dtype})}
    stem = protocol_result_stem(run_dir, checkpoint, split, name, protocol.eps, len(labels), variant)
    json_path, npz_path = Path(f"{stem}.json"), Path(f"{stem}.npz")
    store = BatchStore(Path(f"{stem}.partial"), fingerprint)
    if json_path.exists() and npz_path.exists():
        previous = storage.read_json(json_path)
        if previous.get("fingerprint") == store.fingerprint:
            if progress:
                print(f"{json_path} is finished with these settings: not recomputed", file=sys.stderr, flush=True)
            return {**common, **previous, "result_file": str(json_path)}
    if progress and store.done:
        print(f"resuming {name}: {len(store.done)} batch(es) already done", file=sys.stderr, flush=True)

    def report(done: int, total: int) -> None:
        print(f"{name} (eps={protocol.eps!r}): batch {done}/{total}", file=sys.stderr, flush=True)

    result = run_protocol(protocol, ModelFn(run.eval_model, config.eval.bn_mode), variables, images, labels,
                          seed=config.train.seed, batch_size=batch_size, store=store, progress=report if progress else None)
    summary = {
        **result.summary(),
        "run_dir": str(run_dir),
        "checkpoint": checkpoint,
        **common,
        "step": step,
        "split": split,
        "bn_mode": config.eval.bn_mode,
        "eval_dtype": config.eval.dtype,
        "fingerprint": store.fingerprint,
        "sanity_flags": _sanity(run, variables, images, labels, protocol.eps, config.train.seed,
                                config.eval.bn_mode, result=result, show=progress, norm=protocol.norm,
                                reported=result.per_example["broken_by"] == ROBUST,
                                attacks=tuple(s.config for s in protocol.stages)),
    }
    storage.save_arrays(npz_path, result.per_example)
    storage.write_json(json_path, summary)
    store.clear()
    return {**summary, "result_file": str(json_path)}
