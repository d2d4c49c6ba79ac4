"""Named, versioned evaluation protocols and the cascade that runs them.

    from nt_robust.attacks.protocols import PROTOCOLS, ModelFn, run_protocol

    protocol = PROTOCOLS["autoattack-standard"].at_eps(8 / 255)
    result = run_protocol(protocol, ModelFn(model, "eval"), variables, images, labels, seed=0)
    result.summary()          # name, version, ε (exact), points, seed, robust accuracy per stage
    result.per_example["broken_by"]   # stage index that broke each point; -1 robust; -2 wrong when clean

A protocol is an ordered list of stages (attacks). Each stage attacks only the points
that every earlier stage left correctly classified (the cascade), so the robust accuracy
after the last stage is the per-example worst case over all stages. Stages receive their
ε from the protocol (``at_eps``); a protocol's ``version`` changes whenever a stage's
settings change, so stored results say exactly what was run.

Protocols (version 1 unless said otherwise):

``autoattack-standard``
    APGD-CE (100 steps, 1 restart), APGD-T (targeted DLR, 9 targets, 100 steps),
    FAB-T (9 targets, 100 steps), Square (5000 queries, p_init 0.8): AutoAttack's
    "standard" version, in ℓ∞ or ℓ2 (the original's L2 version: ℓ2 APGD steps, FAB's ℓ2
    projection, Square's ℓ2 windows).
``autoattack-2020`` (version 2)
    The AutoAttack the paper's authors bundled and ran (``fraauto/autoattack.py`` with
    ``plus=False``, called from ``auto_cifar10.py``): APGD-CE (100 steps, 5 restarts),
    APGD-DLR (untargeted, 100 steps, 5 restarts), FAB (untargeted, 100 steps, 5 restarts:
    the first from x, the others from random starts), Square (5000 queries, p_init 0.8,
    1 restart). Version 1 ran 1 restart in every stage.
``apgd``
    APGD-CE and APGD-T (the two gradient stages of ``autoattack-standard``), in ℓ∞ or ℓ2.
``pgd20``
    PGD-20 with CE, uniform start, step ε/4 (:data:`~nt_robust.attacks.config.RELATIVE_STEP`),
    in ℓ∞ or ℓ2: it scales with ε.
``pgd20-0.007`` / ``pgd20-0.003``
    PGD-20 with CE, uniform start, step 0.007 / 0.003 (the paper's two PGD-20 settings:
    absolute steps, ℓ∞, meant for ε = 0.031; at a larger ε the sanity flag
    ``step_budget_below_eps`` says when 20 steps cannot reach the ball's boundary).

Each protocol lists the norms it is defined for (``Protocol.norms``): ``at_eps(eps, norm)``
refuses any other, naming the protocols that take it. ``autoattack-standard``, ``apgd`` and
``pgd20`` take ℓ2; ``autoattack-2020`` (what the authors ran, in ℓ∞) and the absolute-step
presets are ℓ∞ only.
``cw20``
    PGD-20 on the standard CW margin ``max_{j≠y} z_j − z_y``, step 0.007.
``cw20-authors``
    PGD-20 on the authors' CW loss ``−relu(z_y − max_j((1 − 1_y)·z_j))``
    (:func:`nt_robust.attacks.losses.cw_authors`: label masked with 0, clamped at 0), with
    cw20's settings (ε, 20 steps of 0.007, uniform start), which are the authors' too.

Every adversarial point is projected onto B(x, ε) ∩ [0, 1] of the protocol's norm before it is judged, so no
stage can report a point outside the threat model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Union

import jax
import jax.numpy as jnp
import numpy as np

from nt_robust import storage
from nt_robust.data.checks import check_images_and_labels
from nt_robust.attacks.apgd import APGDConfig, apgd
from nt_robust.attacks.config import CW20, CW20_AUTHORS, PGD20, RELATIVE_STEP, AttackConfig
from nt_robust.attacks.fab import FABConfig, fab
from nt_robust.attacks.parts import PROJECTIONS
from nt_robust.attacks.pgd import pgd
from nt_robust.attacks.square import SquareConfig, square

StageConfig = Union[AttackConfig, APGDConfig, FABConfig, SquareConfig]
ROBUST, CLEAN_ERROR = -1, -2  # values of per_example["broken_by"] besides stage indices


@dataclasses.dataclass(frozen=True)
class Stage:
    """One attack of a protocol. ``white_box``: uses gradients (Square does not).
    ``step_fraction``: a PGD stage whose step is ``step_fraction · ε`` (None: its absolute step)."""

    name: str
    config: StageConfig
    white_box: bool = True
    step_fraction: float | None = None

    def at_eps(self, eps: float, norm: str = "linf") -> "Stage":
        changes: dict[str, Any] = {"eps": eps, "norm": norm}
        if self.step_fraction is not None:
            changes["step_size"] = self.step_fraction * eps
        return dataclasses.replace(self, config=dataclasses.replace(self.config, **changes))

    def to_dict(self) -> dict[str, Any]:
        fraction = {} if self.step_fraction is None else {"step_fraction": self.step_fraction}
        return {"name": self.name, "attack": type(self.config).__name__, "white_box": self.white_box, **fraction,
                "config": dataclasses.asdict(self.config)}


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A named, versioned list of stages; ``eps`` None until :meth:`at_eps` sets it (with
    the threat model's ``norm``, one of ``norms``: the norms every stage is defined for)."""

    name: str
    version: int
    stages: tuple[Stage, ...]
    description: str = ""
    eps: float | None = None
    norms: tuple[str, ...] = ("linf",)
    norm: str = "linf"

    def at_eps(self, eps: float, norm: str = "linf") -> "Protocol":
        if not (isinstance(eps, (int, float, np.floating)) and math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
        if norm not in self.norms:
            others = sorted(n for n, p in PROTOCOLS.items() if norm in p.norms)
            raise ValueError(f"protocol {self.name!r} is defined for norm {' / '.join(self.norms)} only, not "
                             f"{norm!r} ({self.description}); for {norm} use one of {others}")
        eps = float(eps)
        return dataclasses.replace(self, eps=eps, norm=norm, stages=tuple(s.at_eps(eps, norm) for s in self.stages))

    def to_dict(self) -> dict[str, Any]:
        # The norm is in every stage's config too; named at the top only when not ℓ∞, so that
        # the fingerprints of ℓ∞ results stored before protocols took a norm still match.
        norm = {} if self.norm == "linf" else {"norm": self.norm}
        return {"name": self.name, "version": self.version, **norm, "eps": self.eps,
                "description": self.description, "stages": [s.to_dict() for s in self.stages]}


_UNSET = 0.0  # ε placeholder until at_eps
PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("autoattack-standard", 1, (
        Stage("apgd-ce", APGDConfig(eps=_UNSET, loss="ce")),
        Stage("apgd-t", APGDConfig(eps=_UNSET, loss="targeted_dlr", num_targets=9)),
        Stage("fab-t", FABConfig(eps=_UNSET, targeted=True, num_targets=9)),
        Stage("square", SquareConfig(eps=_UNSET, num_queries=5000), white_box=False),
    ), "AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square 5000", norms=("linf", "l2")),  # (description: ℓ∞ fingerprints)
    Protocol("autoattack-2020", 2, (
        Stage("apgd-ce", APGDConfig(eps=_UNSET, loss="ce", restarts=5)),
        Stage("apgd-dlr", APGDConfig(eps=_UNSET, loss="dlr", restarts=5)),
        Stage("fab", FABConfig(eps=_UNSET, targeted=False, restarts=5)),
        Stage("square", SquareConfig(eps=_UNSET, num_queries=5000), white_box=False),
    ), "AutoAttack as the authors ran it in 2020 (plus=False): APGD-CE, APGD-DLR, FAB with 5 restarts "
       "each, Square 5000"),
    Protocol("apgd", 1, (
        Stage("apgd-ce", APGDConfig(eps=_UNSET, loss="ce")),
        Stage("apgd-t", APGDConfig(eps=_UNSET, loss="targeted_dlr", num_targets=9)),
    ), "APGD-CE and APGD-T (AutoAttack standard's two gradient stages), for ℓ∞ and ℓ2", norms=("linf", "l2")),
    Protocol("pgd20", 1, (Stage("pgd20", PGD20, step_fraction=RELATIVE_STEP),),
             "PGD-20, CE, step ε/4 (20 steps cover 5ε), uniform start, for ℓ∞ and ℓ2", norms=("linf", "l2")),
    Protocol("pgd20-0.007", 1, (Stage("pgd20", PGD20),), "PGD-20, CE, step 0.007, uniform start"),
    Protocol("pgd20-0.003", 1, (Stage("pgd20", dataclasses.replace(PGD20, step_size=0.003)),),
             "PGD-20, CE, step 0.003, uniform start"),
    Protocol("cw20", 1, (Stage("cw20", CW20),), "PGD-20 on the CW margin, step 0.007"),
    Protocol("cw20-authors", 1, (Stage("cw20-authors", CW20_AUTHORS),),
             "PGD-20 on the authors' CW loss (label masked with 0, clamped at 0), step 0.007"),
)}


def get_protocol(name: str, eps: float, norm: str = "linf") -> Protocol:
    """``PROTOCOLS[name]`` at ``eps`` in ``norm``, with a helpful error for unknown names and
    for a norm the protocol is not defined for."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name].at_eps(eps, norm)


@dataclasses.dataclass(frozen=True)
class ModelFn:
    """``(variables, x) -> logits`` for a Flax model with an explicit BatchNorm mode; hashable,
    so one compiled attack serves every set of variables of the same model."""

    model: Any
    bn_mode: str = "eval"

    def __call__(self, variables: Any, x: jax.Array) -> jax.Array:
        from nt_robust.models.apply import make_logits_fn
        return make_logits_fn(self.model, variables, self.bn_mode)(x)


ApplyFn = Callable[[Any, jax.Array], jax.Array]  # hashable (variables, x) -> logits


def attack_stage(config: StageConfig, logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
                 y: jax.Array, key: jax.Array) -> jax.Array:
    """The adversarial points of one stage, projected onto B(x, ε) ∩ [0, 1]."""
    if isinstance(config, AttackConfig):
        x_adv = pgd(logits_fn, x, y, key, config)
    elif isinstance(config, APGDConfig):
        x_adv = apgd(logits_fn, x, y, key, config).x_adv
    elif isinstance(config, FABConfig):
        x_adv = fab(logits_fn, x, y, key, config).x_adv
    elif isinstance(config, SquareConfig):
        x_adv = square(logits_fn, x, y, key, config).x_adv
    else:
        raise TypeError(f"unknown attack config {type(config).__name__}")
    return PROJECTIONS[config.norm](x_adv, x, config.eps)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _stage_predictions(apply_fn: ApplyFn, config: StageConfig, variables: Any, x: jax.Array, y: jax.Array,
                       key: jax.Array) -> jax.Array:
    logits_fn = functools.partial(apply_fn, variables)
    return jnp.argmax(logits_fn(attack_stage(config, logits_fn, x, y, key)), axis=-1)


@functools.partial(jax.jit, static_argnums=0)
def _predict(apply_fn: ApplyFn, variables: Any, x: jax.Array) -> jax.Array:
    return jnp.argmax(apply_fn(variables, x), axis=-1)


BUCKET_MANTISSA_BITS = 3  # sizes m·2^k with 4 <= m < 8: at most 25% padding, 4 shapes per octave
MIN_BUCKET = 8


def bucket_size(n: int, batch_size: int) -> int:
    """How many rows a stage runs on for ``n`` still-robust points: the smallest
    ``m·2^k ≥ n`` with a 3-bit ``m`` (8, 10, 12, 14, 16, 20, 24, …), at least 8 and at
    most ``max(batch_size, n)``.

    Every padded row costs a whole attack, so padding is kept to at most 25% of ``n``
    (powers of two wasted up to half of the work: on a small CNN's 23 points, padded to 50,
    APGD-T took 19.1 s and FAB-T 30.4 s, on 24 rows 12.1 and 16.9 s; docs/benchmarks.md),
    while each stage still compiles for at most four sizes per doubling of ``n``::

        >>> [bucket_size(n, 256) for n in (1, 9, 23, 33, 100, 129, 250)]
        [8, 10, 24, 40, 112, 160, 256]
    """
    if n < 1:
        raise ValueError(f"need at least one point, got {n}")
    cap = max(batch_size, n)
    shift = max(n.bit_length() - BUCKET_MANTISSA_BITS, 0)
    size = -(-n >> shift) << shift   # n rounded up to a multiple of 2^shift: 3 significant bits
    return min(max(size, MIN_BUCKET), cap)


def cascade_batch(protocol: Protocol, apply_fn: ApplyFn, variables: Any, x: np.ndarray, y: np.ndarray,
                  key: jax.Array, batch_size: int | None = None,
                  stage_seconds: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """Per-example results of the whole cascade on one batch (x float in [0, 1], NHWC).

    Returns ``labels``, ``clean_pred``, ``adv_pred`` (prediction at the breaking point, or the
    clean prediction where nothing broke it) and ``broken_by``. Stage ``s`` uses
    ``fold_in(key, s)`` and sees only the still-robust points, padded to :func:`bucket_size` rows.
    ``stage_seconds``, when given, accumulates each stage's wall time (compilation included)
    under its name.
    """
    if protocol.eps is None:
        raise ValueError(f"protocol {protocol.name!r} has no ε yet: use .at_eps(eps)")
    batch_size = batch_size or len(x)
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    clean_pred = np.asarray(_predict(apply_fn, variables, jnp.asarray(x)))
    adv_pred = clean_pred.copy()
    broken_by = np.where(clean_pred == y, ROBUST, CLEAN_ERROR).astype(np.int16)
    for index, stage in enumerate(protocol.stages):
        todo = np.flatnonzero(broken_by == ROBUST)
        if todo.size == 0:
            break
        size = bucket_size(todo.size, batch_size)
        rows = np.concatenate([todo, np.full(size - todo.size, todo[0])])
        started = time.perf_counter()
        pred = np.asarray(_stage_predictions(apply_fn, stage.config, variables, jnp.asarray(x[rows]),
                                             jnp.asarray(y[rows]), jax.random.fold_in(key, index)))[:todo.size]
        if stage_seconds is not None:  # np.asarray above waited for the stage to finish
            stage_seconds[stage.name] = stage_seconds.get(stage.name, 0.0) + time.perf_counter() - started
        broken = pred != y[todo]
        broken_by[todo[broken]] = index
        adv_pred[todo[broken]] = pred[broken]
    return {"labels": y, "clean_pred": clean_pred, "adv_pred": adv_pred, "broken_by": broken_by}


def stage_accuracies(protocol: Protocol, broken_by: np.ndarray) -> dict[str, float]:
    """Robust accuracy after each stage (cumulative), keyed ``"<index>:<stage name>"``."""
    broken_by = np.asarray(broken_by)
    n = max(len(broken_by), 1)
    out = {"clean": float(np.mean(broken_by != CLEAN_ERROR)) if len(broken_by) else 0.0}
    for index, stage in enumerate(protocol.stages):
        still = (broken_by == ROBUST) | (broken_by > index)
        out[f"{index}:{stage.name}"] = float(np.sum(still) / n)
    return out


@dataclasses.dataclass
class ProtocolResult:
    """What one protocol evaluation leaves: per-example arrays and the settings."""

    protocol: Protocol
    per_example: dict[str, np.ndarray]
    seed: int
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        broken_by = self.per_example["broken_by"]
        labels = self.per_example["labels"]
        return {
            "protocol": self.protocol.name,
            "protocol_version": self.protocol.version,
            "norm": self.protocol.norm,
            "eps": self.protocol.eps,
            "num_examples": int(len(labels)),
            "seed": self.seed,
            "natural_accuracy": float(np.mean(self.per_example["clean_pred"] == labels)) if len(labels) else 0.0,
            "robust_accuracy": float(np.mean(broken_by == ROBUST)) if len(labels) else 0.0,
            "robust_accuracy_after_stage": stage_accuracies(self.protocol, broken_by),
            "broken_by_stage": {s.name: int(np.sum(broken_by == i)) for i, s in enumerate(self.protocol.stages)},
            "stages": [s.to_dict() for s in self.protocol.stages],
            **self.settings,
        }


def run_protocol(protocol: Protocol, apply_fn: ApplyFn, variables: Any, images: np.ndarray, labels: np.ndarray,
                 seed: int = 0, batch_size: int = 256, store: "BatchStore | None" = None,
                 progress: Callable[[int, int], None] | None = None) -> ProtocolResult:
    """Run ``protocol`` batch by batch; batch ``i`` uses ``fold_in(key(seed), i)``.

    With a ``store`` (:class:`nt_robust.attacks.protocols.BatchStore`), finished batches
    are loaded instead of recomputed and every new batch is saved as soon as it is done.
    ``images``: uint8 (scaled by 1/255) or float in [0, 1], NHWC.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    check_images_and_labels(images, labels, what="protocol")  # NaN (which min() < 0 misses), range, labels
    if images.dtype == np.uint8:
        to_float = lambda a: a.astype(np.float32) / 255.0  # noqa: E731
    else:
        to_float = lambda a: a.astype(np.float32)  # noqa: E731
    base = jax.random.key(seed)
    starts = list(range(0, len(images), batch_size))
    chunks, stage_seconds = [], {}
    started = time.perf_counter()
    for index, start in enumerate(starts):
        chunk = store.load(index) if store is not None else None
        if chunk is None:
            chunk = cascade_batch(protocol, apply_fn, variables, to_float(images[start:start + batch_size]),
                                  labels[start:start + batch_size], jax.random.fold_in(base, index), batch_size,
                                  stage_seconds)
            if store is not None:
                store.save(index, chunk)
        chunks.append(chunk)
        if progress is not None:
            progress(index + 1, len(starts))
    per_example = ({k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]} if chunks else
                   {k: np.zeros(0, np.int32) for k in ("labels", "clean_pred", "adv_pred", "broken_by")})
    return ProtocolResult(protocol, per_example, seed,
                          {"batch_size": batch_size, "seconds": round(time.perf_counter() - started, 3),
                           "stage_seconds": {name: round(value, 3) for name, value in stage_seconds.items()}})


class BatchStore:
    """Per-batch results on disk, so an interrupted evaluation resumes where it stopped::

        store = BatchStore(run_dir / "eval" / "best_test_test_autoattack-standard.partial",
                           fingerprint={"protocol": protocol.to_dict(), "seed": 0, ...})
        result = run_protocol(..., store=store)
        store.clear()                 # once the final result is written

    ``batch_00007.npz`` holds batch 7's arrays, ``index.json`` the finished batches and the
    fingerprint of the settings; both are written atomically (a batch is listed only after
    its file is complete). A store whose fingerprint differs from the requested one (other
    ε, protocol version, checkpoint, points, seed, batch size) is discarded, not mixed in.
    """

    def __init__(self, directory: str | Path, fingerprint: dict[str, Any]):
        self.directory = Path(directory)
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        self.done: set[int] = set()
        index_path = self.directory / "index.json"
        if index_path.exists():
            index = storage.read_json(index_path)
            if index.get("fingerprint") == self.fingerprint:
                self.done = set(index.get("batches", []))
            else:
                shutil.rmtree(self.directory)

    def _write_index(self) -> None:
        storage.write_json(self.directory / "index.json",
                            {"fingerprint": self.fingerprint, "batches": sorted(self.done)})

    def load(self, index: int) -> dict[str, np.ndarray] | None:
        if index not in self.done:
            return None
        return storage.load_arrays(self.directory / f"batch_{index:05d}.npz")

    def save(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        storage.save_arrays(self.directory / f"batch_{index:05d}.npz", arrays)
        self.done.add(index)
        self._write_index()

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
