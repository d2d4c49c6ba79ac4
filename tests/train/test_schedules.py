"""Learning-rate schedules epoch for epoch against the reference code (issue 11, item 4),
and old run directories resuming with the schedule they started with.

The references are transcribed below as plain Python from yaodongyu/TRADES
(train_trades_cifar10.py, ``adjust_learning_rate``; the paper's authors' code,
tabrisweapon/A-temp-project train_cifar10.py, has the same function) and from the authors'
``lr_early_stop``. Both run ``for epoch in range(1, epochs + 1)``: epochs are 1-based.
"""

import dataclasses

import numpy as np
import pytest

from nt_robust import storage
from nt_robust.config import to_dict
from nt_robust.train import ExperimentConfig, OptimConfig
from nt_robust.train.config import config_warnings
from nt_robust.train.extend import resume_config
from nt_robust.train.optim import epoch_rates, late_halving_rates, make_schedule
from nt_robust.train.run_dir import RunConfigMismatchError, RunDirectory

STEPS_PER_EPOCH = 3
# float32 rounding: half an ulp is 2^-24 of the value. The piecewise schedule (optax) holds
# float32(lr) and multiplies it by float32(decay) once per milestone passed: at most 3 decays,
# so 1 + 3 representation errors and 3 products, 7 roundings in all (< 8·2^-24 = 2^-21).
PIECEWISE_RTOL = 2.0 ** -21
# The late-halving table is computed in float64 (lr · 0.5^k: a power-of-two scaling, exact)
# and cast to float32 once: one rounding, ≤ 2^-24; we allow one ulp.
HALVING_RTOL = 2.0 ** -23


def trades_adjust_learning_rate(base_lr: float, epoch: int) -> float:
    """TRADES' (and the authors') step schedule, 1-based ``epoch``."""
    rate = base_lr
    if epoch >= 75:
        rate = base_lr * 0.1
    if epoch >= 90:
        rate = base_lr * 0.01
    if epoch >= 100:
        rate = base_lr * 0.001
    return rate


def authors_lr_early_stop(base_lr: float, epoch: int, epochs: int) -> float:
    """The authors' late halving, 1-based ``epoch`` of ``epochs`` (raises ZeroDivisionError
    for epochs < 100, as their code does)."""
    rate = base_lr
    if epoch >= int(epochs * 0.75):
        rate = rate * (0.5 ** int((epoch - epochs * 0.74) / int(epochs / 100)))
    return rate


def every_step(schedule, epochs: int) -> np.ndarray:
    """The rate of every step, shape (epochs, steps per epoch)."""
    steps = np.arange(epochs * STEPS_PER_EPOCH)
    return np.array([float(schedule(s)) for s in steps]).reshape(epochs, STEPS_PER_EPOCH)


def test_piecewise_default_is_trades_adjust_learning_rate_at_every_step_of_100_epochs():
    config = OptimConfig(lr=0.1)   # the defaults: milestones (75, 90, 100), decay 0.1, "trades" convention
    ours = every_step(make_schedule(config, 100, STEPS_PER_EPOCH), 100)
    reference = np.array([trades_adjust_learning_rate(0.1, epoch) for epoch in range(1, 101)])
    for epoch in range(1, 101):   # the lr of each epoch, ours (every step) next to the reference
        np.testing.assert_allclose(ours[epoch - 1], reference[epoch - 1], rtol=PIECEWISE_RTOL,
                                   err_msg=f"epoch {epoch}")
    # 74 epochs at 0.1 (not 75), then 15, 10 and the last one.
    assert [int(np.sum(np.isclose(ours[:, 0], r, rtol=1e-4))) for r in (0.1, 0.01, 0.001, 0.0001)] == [74, 15, 10, 1]
    np.testing.assert_allclose(epoch_rates(config, 100), reference, rtol=PIECEWISE_RTOL)


def test_authors_late_halving_at_every_step_of_100_200_and_300_epochs():
    for epochs in (100, 200, 300):   # period ⌊E/100⌋ = 1, 2, 3 epochs
        config = OptimConfig(lr=0.1, schedule="late_halving")
        ours = every_step(make_schedule(config, epochs, STEPS_PER_EPOCH), epochs)
        reference = np.array([authors_lr_early_stop(0.1, epoch, epochs) for epoch in range(1, epochs + 1)])
        np.testing.assert_allclose(ours, np.repeat(reference[:, None], STEPS_PER_EPOCH, 1), rtol=HALVING_RTOL,
                                   err_msg=f"epochs = {epochs}")
    rates = late_halving_rates(0.1, 100)
    assert rates[73] == 0.1 and rates[74] == 0.05 and rates[75] == 0.025   # epochs 74, 75, 76


def test_late_halving_below_100_epochs_halves_every_epoch_where_the_reference_divides_by_zero():
    with pytest.raises(ZeroDivisionError):
        authors_lr_early_stop(0.1, 8, 8)
    for epochs in (4, 8, 10, 50, 99):
        # Our documented rule: the reference formula with the period max(1, ⌊E/100⌋) = 1.
        expected = [0.1 if e < int(epochs * 0.75) else 0.1 * 0.5 ** int((e - epochs * 0.74) / 1)
                    for e in range(1, epochs + 1)]
        np.testing.assert_allclose(epoch_rates(OptimConfig(lr=0.1, schedule="late_halving"), epochs, 2), expected,
                                   rtol=HALVING_RTOL, err_msg=f"epochs = {epochs}")
    # 8 epochs: epochs 1-5 at 0.1, epoch 6 (0.08 past the offset 5.92) still 0.1, then halving.
    assert late_halving_rates(0.1, 8) == [0.1] * 6 + [0.05, 0.025]


def test_late_halving_offset_is_the_references_bitwise():
    # late_halving_start = 0.75 gives the offset E·(0.75 − 0.01), which must be the reference's E·0.74.
    assert all(epochs * (0.75 - 0.01) == epochs * 0.74 for epochs in range(1, 2001))


def test_trades_convention_decays_one_epoch_before_legacy():
    trades = epoch_rates(OptimConfig(lr=1.0, milestones=(3,), decay=0.5), 5)
    legacy = epoch_rates(OptimConfig(lr=1.0, milestones=(3,), decay=0.5, milestone_convention="legacy"), 5)
    assert trades == [1.0, 1.0, 0.5, 0.5, 0.5] and legacy == [1.0, 1.0, 1.0, 0.5, 0.5]
    # A milestone at the last epoch happens under "trades" (it decays that epoch), not under "legacy".
    assert epoch_rates(OptimConfig(lr=1.0, milestones=(5,), decay=0.5), 5)[-1] == 0.5


def test_config_warnings_follow_the_convention():
    def warnings(milestones, convention):
        config = ExperimentConfig(optim=OptimConfig(milestones=milestones, milestone_convention=convention),
                                  train=dataclasses.replace(ExperimentConfig().train, epochs=10))
        return [w for w in config_warnings(config) if w.startswith("optim.milestones")]

    assert warnings((8, 10), "trades") == []                            # epoch 10 is the last one: it decays
    assert "the decays at epochs [10] never happen" in warnings((8, 10), "legacy")[0]
    (warning,) = warnings((11,), "trades")
    assert "never decays" in warning and "optim.milestones = [7, 9, 10]" in warning


def _old_run(tmp_path, config: ExperimentConfig):
    """A run directory as code before issue 11 saved it: config.json without the new fields."""
    saved = to_dict(config)
    for section, field in (("optim", "milestone_convention"), ("optim", "late_halving_rule"),
                           ("objective", "bn_passes")):
        del saved[section][field]
    run_dir = tmp_path / config.name
    run_dir.mkdir()
    storage.write_json(run_dir / "config.json", saved)
    return run_dir, saved


@pytest.mark.parametrize("kind, bn_passes", [("trades", "authors"), ("pgd_at", "trades")])
def test_an_old_run_dir_resumes_with_the_schedule_and_passes_it_started_with(tmp_path, kind, bn_passes):
    loss = "kl" if kind == "trades" else "ce"
    config = ExperimentConfig(name=f"old_{kind}", objective=dataclasses.replace(ExperimentConfig().objective, kind=kind),
                              train_attack=dataclasses.replace(ExperimentConfig().train_attack, loss=loss),
                              optim=OptimConfig(milestones=(75, 90)))
    run_dir, saved = _old_run(tmp_path, config)
    resumed = resume_config(run_dir)
    assert resumed.optim.milestone_convention == "legacy" and resumed.optim.late_halving_rule == "legacy"
    assert resumed.objective.bn_passes == bn_passes   # both: clean then adversarial, as every run did before
    rates = epoch_rates(resumed.optim, 100)
    assert rates[74] == pytest.approx(0.1) and rates[75] == pytest.approx(0.01)   # 75 epochs at 0.1, as it began
    # The resumed config claims the directory without a mismatch; today's defaults do not, and say what to add.
    assert RunDirectory(run_dir).claim(to_dict(resumed), {}, write=False) is True
    with pytest.raises(RunConfigMismatchError, match="--set optim.milestone_convention=legacy"):
        RunDirectory(run_dir).claim(to_dict(dataclasses.replace(config, optim=OptimConfig(milestones=(75, 90)))),
                                    {}, write=False)
    assert storage.read_json(run_dir / "config.json") == saved   # nothing rewritten


def test_an_old_late_halving_run_resumes_with_the_legacy_halving(tmp_path):
    run_dir, _ = _old_run(tmp_path, ExperimentConfig(name="old_halving", optim=OptimConfig(schedule="late_halving")))
    rates = epoch_rates(resume_config(run_dir).optim, 100)
    assert rates[74] == pytest.approx(0.1) and rates[75] == pytest.approx(0.05)   # epoch 75 at 0.1, as it began


def test_bad_convention_values_name_the_field():
    with pytest.raises(ValueError, match="optim.milestone_convention must be one of"):
        OptimConfig(milestone_convention="pytorch")
    with pytest.raises(ValueError, match="optim.late_halving_rule must be one of"):
        OptimConfig(late_halving_rule="ours")
