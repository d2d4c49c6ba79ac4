"""The experiment config: every knob of one training run, typed and validated.

Sections mirror the data flow (data -> model -> attack -> objective -> optimizer ->
loop -> evaluation). Defaults are the paper's TRADES protocol (docs/paper.md §4) except
where a field says otherwise. Load one from a file with overrides::

    from nt_robust.config import load_config
    config = load_config(ExperimentConfig, "experiments/quick_fmnist.toml", ["objective.lam=9"])
"""

from __future__ import annotations

import dataclasses

from nt_robust.attacks import PGD20, TRADES_TRAIN, AttackConfig
from nt_robust.config import check_choice, check_int, check_real, require
from nt_robust.models import BN_MODES, ModelConfig
from nt_robust.models.layers import COMPUTE_DTYPES

OBJECTIVES = ("natural", "pgd_at", "trades")
SCHEDULES = ("piecewise", "cosine", "late_halving", "constant")
MILESTONE_CONVENTIONS = ("trades", "legacy")
LATE_HALVING_RULES = ("authors", "legacy")
BN_PASSES = ("authors", "trades")
LIPSCHITZ_METHODS = ("yang", "trades_grad", "none")
TRAIN_SAMPLES = ("first", "seed")
DATASETS = ("fashion_mnist", "mnist", "cifar10", "cifar100", "synthetic")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """``val_size`` examples are carved from the training set (seeded by ``split_seed``)
    for checkpoint selection; ``train_subset`` keeps N of the remaining training examples
    for quick runs (None: all). Which N, ``train_sample``:

    * "first" (default): the first N, in dataset order, the same for every seed (what every
      run did before the option existed; saved runs without it resume with it).
    * "seed": a class-balanced random draw seeded by ``train.seed`` (N // C images of each
      of the C classes, the N % C left over to randomly chosen classes), so that seeds
      vary the training sample as well as the initialization and the batch order. The
      validation split stays the one of ``split_seed`` for every seed. Needs ``train_subset``.

    ``downsample`` = f shrinks
    every image (train, validation and test) by an f x f block mean, rounded to uint8
    (``nt_robust.data.resize``; 28x28 Fashion-MNIST -> 14x14 at 2): for conv nets on a CPU
    budget; 1 (default) keeps the images as they are. How much of the validation and test
    sets is evaluated each epoch is set in ``eval``."""

    dataset: str = "cifar10"
    data_dir: str | None = None
    val_size: int = 1000
    split_seed: int = 0
    train_subset: int | None = None
    train_sample: str = "first"
    crop_padding: int = 4
    flip: bool = True
    downsample: int = 1

    def __post_init__(self) -> None:
        check_choice("data.dataset", self.dataset, DATASETS)
        check_int("data.val_size", self.val_size, minimum=0)
        check_int("data.crop_padding", self.crop_padding, minimum=0)
        check_int("data.train_subset", self.train_subset, minimum=1, optional=True)
        check_choice("data.train_sample", self.train_sample, TRAIN_SAMPLES, "\"first\": the first data.train_subset "
                     "images; \"seed\": a class-balanced draw seeded by train.seed")
        require(self.train_sample == "first" or self.train_subset is not None, "data.train_sample",
                "= 'seed' draws data.train_subset images, but data.train_subset is none (all images, the same "
                "for every seed): set data.train_subset = N, or data.train_sample = \"first\"")
        check_int("data.downsample", self.downsample, minimum=1)  # 1: full size


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """``kind``: "natural" (cross-entropy), "pgd_at" (Eq. 1: CE(x) + lam·(CE(x̂) − CE(x)),
    lam = 1 is Madry's PGD-AT) or "trades" (CE(x) + lam·KL(p(x) ‖ p(x̂))).

    ``lam`` is the weight on the robust regularizer: for TRADES it is the TRADES *code's*
    ``beta`` (default 6), not the TRADES paper's λ = 1/beta. ``clip_regularizer`` (pgd_at
    only) uses the authors' code variant lam·(max(CE(x̂), CE(x)) − CE(x)).
    ``attack_bn_mode``: BatchNorm statistics while the inner attack runs ("eval", as in
    TRADES and the paper's code, or "train").

    ``bn_passes``: which training-mode forward passes update the BatchNorm running
    statistics, in which order (docs/paper.md §4). The loss and its gradients are the same
    for both (a training-mode pass normalizes with its batch's own statistics); only the
    running statistics, and so eval-mode accuracy, differ:

    * "authors" (default): the paper's authors' code (tabrisweapon/A-temp-project) — trades:
      clean, adversarial; pgd_at: adversarial, clean.
    * "trades": the TRADES code (yaodongyu/TRADES) — trades: clean (for the CE),
      adversarial, clean again (for the KL target); TRADES has no pgd_at, so for pgd_at
      "trades" means clean, adversarial (the order of TRADES' first two passes).

    The default is "authors" because the paper's numbers come from the authors' code, and
    because it is what every trades-kind run did before the option existed (clean then
    adversarial), so the presets' results are unchanged. A saved run without this field
    resumes with what it ran: "authors" for trades and natural, "trades" for pgd_at
    (nt_robust.train.run_dir.ADDED_FIELDS). Models without BatchNorm are unaffected."""

    kind: str = "trades"
    lam: float = 6.0
    clip_regularizer: bool = False
    attack_bn_mode: str = "eval"
    bn_passes: str = "authors"

    def __post_init__(self) -> None:
        check_choice("objective.kind", self.kind, OBJECTIVES)
        check_real("objective.lam", self.lam, minimum=0)
        check_choice("objective.attack_bn_mode", self.attack_bn_mode, BN_MODES)
        require(not self.clip_regularizer or self.kind == "pgd_at", "objective.clip_regularizer",
                "only applies to kind = 'pgd_at'")
        check_choice("objective.bn_passes", self.bn_passes, BN_PASSES, "whose code's BatchNorm pass order to follow")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """SGD with momentum; weight decay is added to the gradient of *all* weights before
    momentum, as in PyTorch's SGD used by TRADES. Epochs below are 1-based, as in the
    reference code's ``for epoch in range(1, epochs + 1)``. Schedules (docs/paper.md §4):

    * "piecewise": the rate is multiplied by ``decay`` at each milestone. With
      ``milestone_convention = "trades"`` (default) milestone m means "the decayed rate
      applies from epoch m on", TRADES' ``if epoch >= m`` test: the defaults (75, 90, 100)
      over 100 epochs give 74 epochs at lr, 15 at lr/10, 10 at lr/100 and the last one at
      lr/1000, exactly TRADES' and the authors' ``adjust_learning_rate``. "legacy" (this
      code before issue 11) applies it after m full epochs, i.e. from epoch m + 1 on.
    * "late_halving": the authors' ``lr_early_stop``. With ``late_halving_rule =
      "authors"`` (default), from epoch ⌊s·E⌋ on (s = ``late_halving_start``, E =
      ``train.epochs``) the rate is lr · 0.5^⌊(epoch − (s − 0.01)·E) / P⌋ with period
      P = ⌊E/100⌋; for E = 100 that is 0.05 at epoch 75, 0.025 at 76, … Their code divides
      by zero when E < 100 (P = 0); we then use P = 1 (halve every epoch). "legacy" (this
      code before issue 11): halve every epoch from epoch round(s·E) + 1 on, one epoch later
      than theirs at E = 100.
    * "cosine" or "constant".

    Run directories saved before ``milestone_convention`` / ``late_halving_rule`` existed
    resume with "legacy" (nt_robust.train.run_dir.ADDED_FIELDS), i.e. with the schedule
    they started with. ``ema_decay``: keep an exponential moving average of the weights
    (None: off)."""

    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 2e-4
    schedule: str = "piecewise"
    milestones: tuple[int, ...] = (75, 90, 100)
    decay: float = 0.1
    milestone_convention: str = "trades"
    late_halving_start: float = 0.75
    late_halving_rule: str = "authors"
    ema_decay: float | None = None

    def __post_init__(self) -> None:
        check_real("optim.lr", self.lr, above=0)
        check_real("optim.momentum", self.momentum, minimum=0, below=1)
        check_real("optim.weight_decay", self.weight_decay, minimum=0)
        check_choice("optim.schedule", self.schedule, SCHEDULES)
        require(list(self.milestones) == sorted(self.milestones) and all(m > 0 for m in self.milestones),
                "optim.milestones", f"must be increasing positive epochs, got {list(self.milestones)}")
        check_real("optim.decay", self.decay, above=0, maximum=1)
        check_real("optim.late_halving_start", self.late_halving_start, minimum=0, maximum=1)  # a fraction of training
        check_choice("optim.milestone_convention", self.milestone_convention, MILESTONE_CONVENTIONS,
                     "\"trades\": milestone m decays from 1-based epoch m on; \"legacy\": after m full epochs")
        check_choice("optim.late_halving_rule", self.late_halving_rule, LATE_HALVING_RULES,
                     "\"authors\": their lr_early_stop formula; \"legacy\": this code's rule before issue 11")
        check_real("optim.ema_decay", self.ema_decay, above=0, below=1, optional=True)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Per-epoch evaluation on ``val_examples`` of the held-out split and ``test_examples``
    of the test set (None: all) with ``attack`` (default the paper's PGD-20) and a local
    Lipschitz estimate (docs/paper.md §3: "yang" on logits, "trades_grad" = the authors'
    logging, or "none"); ``lipschitz_eps`` None takes the method's default ε;
    ``lipschitz_direction`` ("yang" only): "ascend" (default) or "published" (Yang et al.'s
    published loop, which descends on the ratio; see :func:`nt_robust.metrics.yang_local_lipschitz`).
    ``dtype``: the compute dtype of evaluation ("float32", default, or "bfloat16"), separate
    from ``model.dtype``: a model trained in bfloat16 is attacked in float32 unless asked."""

    attack: AttackConfig = PGD20
    lipschitz: str = "yang"
    lipschitz_eps: float | None = None
    lipschitz_direction: str = "ascend"
    val_examples: int | None = 1000
    test_examples: int | None = 1000
    batch_size: int = 256
    every_epochs: int = 1
    bn_mode: str = "eval"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        check_choice("eval.lipschitz", self.lipschitz, LIPSCHITZ_METHODS)
        check_real("eval.lipschitz_eps", self.lipschitz_eps, above=0, optional=True)
        check_choice("eval.lipschitz_direction", self.lipschitz_direction, ("ascend", "published"))
        require(self.lipschitz_direction == "ascend" or self.lipschitz == "yang", "eval.lipschitz_direction",
                f"'published' applies to eval.lipschitz = 'yang' only, got {self.lipschitz!r}")
        for name in ("val_examples", "test_examples"):
            check_int(f"eval.{name}", getattr(self, name), minimum=0, optional=True)
        check_int("eval.batch_size", self.batch_size, minimum=1)
        check_int("eval.every_epochs", self.every_epochs, minimum=1)
        check_choice("eval.bn_mode", self.bn_mode, BN_MODES)
        check_choice("eval.dtype", self.dtype, COMPUTE_DTYPES, "the compute dtype attacks and evaluation run the "
                     "model in, whatever model.dtype trained it")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """``batch_size`` is the *global* batch, split evenly over all devices of all hosts.
    ``checkpoint_every_steps`` adds mid-epoch checkpoints (0: only at epoch ends);
    ``keep_checkpoints`` recent ones are kept, plus the best by validation and by test.
    ``progress``: a progress bar on a terminal, one log line a minute elsewhere (a batch job's
    log; ``NT_ROBUST_PROGRESS_SECONDS`` sets the interval; ``nt_robust.train.progress``).
    ``tensorboard`` / ``wandb``: every metrics row also to TensorBoard event files in
    RUN_DIR/tensorboard/ (tensorboardX, no TensorFlow) / an offline W&B run in RUN_DIR/wandb/
    (``nt_robust.train.tracking``); like ``progress``, they may change when a run resumes."""

    epochs: int = 100
    batch_size: int = 128
    seed: int = 0
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 2
    progress: bool = True
    tensorboard: bool = False
    wandb: bool = False

    def __post_init__(self) -> None:
        check_int("train.epochs", self.epochs, minimum=1)
        check_int("train.batch_size", self.batch_size, minimum=1)
        check_int("train.checkpoint_every_steps", self.checkpoint_every_steps, minimum=0)
        check_int("train.keep_checkpoints", self.keep_checkpoints, minimum=1)


WAR_MODES = ("weighted_ratio", "unweighted_ratio")


@dataclasses.dataclass(frozen=True)
class WarConfig:
    """WAR (Width Adjusted Regularization), *our reconstruction* in two readings
    (docs/paper.md §6: the paper's Algorithm 1 could not be obtained). Both start a wider
    network at the small network's tuned λ_s (``objective.lam``), keep exponential moving
    averages R̄_nat, R̄_rob (``momentum``) of its per-epoch training terms, and update λ after
    each epoch from ``warmup_epochs`` on, clipped to [``min_lam``, ``max_lam``]:

    ``mode = "weighted_ratio"`` (reading A): hold the *weighted* ratio ρ = λ·R_rob/R_nat at
    the small model's ρ_s: λ = ρ_s · R̄_nat / R̄_rob. Under the paper's premise (a wide net
    has lower natural risk and a larger regularizer at fixed λ) this lowers λ.

    ``mode = "unweighted_ratio"`` (reading B, the paper's "adaptively enlarges λ on wide
    models"): multiplicative feedback on the *unweighted* ratio r = R_rob/R_nat,
    λ ← λ · (r̄_w / r_s)^``gain``: λ rises while the wide model's ratio exceeds the small
    model's r_s and falls when it is below.

    The small model's ratio (ρ_s or r_s, the mean of its per-epoch ratios) is read from
    ``reference_run`` (its run directory) unless ``target_ratio`` gives it directly; it
    means ρ_s or r_s according to ``mode``. ``min_lam`` None means λ_s: WAR never goes below
    the small model's λ. Run directories written before ``mode`` existed used reading A,
    which is the default so that they resume unchanged."""

    enabled: bool = False
    mode: str = "weighted_ratio"
    target_ratio: float | None = None
    reference_run: str | None = None
    momentum: float = 0.5
    warmup_epochs: int = 1
    gain: float = 1.0
    min_lam: float | None = None
    max_lam: float = 100.0

    def __post_init__(self) -> None:
        check_choice("war.mode", self.mode, WAR_MODES)
        if self.enabled:
            require((self.target_ratio is None) != (self.reference_run is None), "war.target_ratio",
                    "or war.reference_run must be set (exactly one) when war.enabled = true")
        check_real("war.target_ratio", self.target_ratio, above=0, optional=True)
        check_real("war.momentum", self.momentum, minimum=0, below=1)
        check_int("war.warmup_epochs", self.warmup_epochs, minimum=1)
        check_real("war.gain", self.gain, above=0, maximum=4)  # the exponent of the unweighted_ratio update
        check_real("war.min_lam", self.min_lam, minimum=0, optional=True)
        require(self.max_lam > 0 and (self.min_lam is None or self.max_lam >= self.min_lam), "war.max_lam",
                f"must be > 0 and >= war.min_lam, got {self.max_lam}")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One training run. ``train_attack`` is the inner maximization (default TRADES':
    ℓ∞ ε = 0.031, 10 steps of 0.007 from x + 0.001·N(0, I), KL loss; for pgd_at use
    ``loss = "ce"``). ε is stored exactly as written."""

    name: str = "run"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig(arch="wrn", width=10, depth=34)
    objective: ObjectiveConfig = ObjectiveConfig()
    train_attack: AttackConfig = TRADES_TRAIN
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    train: LoopConfig = LoopConfig()
    war: WarConfig = WarConfig()

    def __post_init__(self) -> None:
        require(not self.war.enabled or self.objective.kind != "natural", "war.enabled",
                "needs a robust objective (objective.kind = 'trades' or 'pgd_at')")
        require(bool(self.name) and "/" not in self.name and "\\" not in self.name and self.name not in (".", ".."),
                "name", f"must be a non-empty name without '/' and not '.' or '..' (it names the run directory "
                f"runs/<name>), got {self.name!r}")
        expected_loss = {"trades": "kl", "pgd_at": "ce"}.get(self.objective.kind)
        require(not expected_loss or self.train_attack.loss == expected_loss, "train_attack.loss",
                f"is {self.train_attack.loss!r} but objective.kind {self.objective.kind!r} maximizes "
                f"{expected_loss!r}: set train_attack.loss = \"{expected_loss}\"")


def config_warnings(config: ExperimentConfig) -> list[str]:
    """Settings that are valid but probably not what was meant (``nt-robust train`` prints them)."""
    warnings = []
    optim, epochs = config.optim, config.train.epochs
    if optim.schedule == "piecewise" and optim.milestones:
        if optim.milestone_convention == "trades":
            # Milestone m decays from (1-based) epoch m on: it happens iff m <= epochs.
            late = [m for m in optim.milestones if m > epochs]
            proposal = sorted({max(1, int(epochs * f)) for f in (0.75, 0.9, 1.0)})
            fix = (f"set optim.milestones = {proposal} (the default's 75%, 90% and 100% of training)"
                   if proposal[0] > 1 else "")
            where = "within"
        else:
            # "legacy": milestone m decays after m full epochs: it happens iff m < epochs.
            late = [m for m in optim.milestones if m >= epochs]
            proposal = sorted({max(1, int(epochs * f)) for f in (0.75, 0.9)} - {epochs})
            fix = (f"set optim.milestones = {proposal} (the default's 75% and 90% of training)"
                   if proposal and proposal[-1] < epochs else "")
            where = "before"
        if late:
            effect = (f"the learning rate never decays (optim.lr = {optim.lr:g} for the whole run)"
                      if len(late) == len(optim.milestones) else f"the decays at epochs {late} never happen")
            fix = " or ".join(x for x in (fix, 'optim.schedule = "constant" if no decay is meant') if x)
            warnings.append(f"optim.milestones {list(optim.milestones)} are not all {where} train.epochs = {epochs} "
                            f"(optim.milestone_convention = {optim.milestone_convention!r}): {effect}; {fix}")
    from nt_robust.models.registry import width_hint
    hint = width_hint(config.model)
    if hint:
        warnings.append(hint)
    return warnings


# Image shape (H, W, C) and classes of each dataset, known without loading it.
DATASET_SHAPES = {"fashion_mnist": ((28, 28, 1), 10), "mnist": ((28, 28, 1), 10), "cifar10": ((32, 32, 3), 10),
                  "cifar100": ((32, 32, 3), 100), "synthetic": ((8, 8, 1), 4)}


def input_shape(data: DataConfig) -> tuple[tuple[int, int, int], int]:
    """(H, W, C) of the images a run with ``data`` sees (after ``data.downsample``) and the
    number of classes, without loading the dataset."""
    (h, w, c), classes = DATASET_SHAPES[data.dataset]
    return (h // data.downsample, w // data.downsample, c), classes


def estimate_training_memory(config: ExperimentConfig) -> dict[str, int]:
    """A rough memory estimate of one run, from shapes only (nothing is allocated): weights,
    gradients and momentum (+ EMA) of every parameter in float32, plus every layer's output
    for two forward passes of a training batch (the clean and the adversarial one, held for
    the backward pass) in the compute dtype (``model.dtype``: 4 bytes for float32, 2 for
    bfloat16). Per replica of the model; XLA may need less (it frees and fuses) or somewhat
    more (workspace), so it is an order of magnitude, for catching mistakes."""
    from nt_robust.models.registry import estimate_model_size

    shape, classes = input_shape(config.data)
    size = estimate_model_size(config.model, classes, shape)
    copies = 3 + (config.optim.ema_decay is not None)
    weights = 4 * (size["parameters"] * copies + size["state"])
    activation_itemsize = 2 if config.model.dtype in ("bfloat16", "bf16") else 4
    activations = activation_itemsize * 2 * size["activations_per_example"] * config.train.batch_size
    return {**size, "weights_bytes": weights, "activation_bytes": activations, "total_bytes": weights + activations}
