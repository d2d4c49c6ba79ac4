"""`nt-robust eval`: every attack and protocol at the run's ε (here 0.1, not the presets'
0.031), every override taking effect or refused, results keyed by what they cover, and
the checkpoint's selection rule next to every number (issue 17, items 1, 2 and 14)."""

import json

import numpy as np
import pytest

from nt_robust import storage
from nt_robust.attacks.protocols import PROTOCOLS, ProtocolResult
from nt_robust.cli import main
from nt_robust import evaluate as evaluate_module
from nt_robust.evaluate import ATTACKS, STEP_FRACTIONS

RUN_EPS = 0.1  # tiny_run's eval.attack.eps (tests/train/conftest.py)

CHEAP = ["--set", "eval.attack.num_steps=3"]  # presets keep their 20 steps otherwise; the ε path is the same


@pytest.fixture
def run_dir(tiny_run):
    assert storage.read_json(tiny_run / "config.json")["eval"]["attack"]["eps"] == RUN_EPS
    return tiny_run


def _eval(capsys, *args):
    assert main(["eval", *map(str, args)]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_every_attack_preset_runs_at_the_runs_eps_and_records_it(run_dir, capsys, attack):
    cheap = [] if attack == "fgsm" else CHEAP
    more = ["--set", "eval.attack.restarts=2", "--batch-size", "32"] if attack == "pgd20" else []
    result, err = _eval(capsys, run_dir, "--attack", attack, "--examples", 16, *cheap, *more)
    assert result["eps"] == result["attack"]["eps"] == RUN_EPS
    assert result["eps_source"] == "the run's eval.attack.eps" and f"eps={RUN_EPS}" in err
    # --set eval.attack.* applies on top of the preset (it used to be dropped)
    assert result["attack"]["num_steps"] == (1 if attack == "fgsm" else 3)
    # ε-relative presets step a fraction of the run's ε; the published ones keep their absolute step
    fraction = STEP_FRACTIONS.get(attack)
    assert result["attack"]["step_size"] == (ATTACKS[attack].step_size if fraction is None else fraction * RUN_EPS)
    assert result["attack"]["loss"] == ATTACKS[attack].loss
    assert result["attack"]["restarts"] == (2 if more else 1) and result["batch_size"] == (32 if more else 64)
    assert ("_set-" in result["result_file"]) == bool(cheap)  # changed settings: not the plain preset's file
    assert storage.read_json(result["result_file"])["eps"] == RUN_EPS


def test_every_protocol_runs_at_the_runs_eps(run_dir, capsys, monkeypatch):
    # The cascade itself is tested in tests/attacks; here: which ε each protocol's stages get.
    seen = {}

    def fake_run_protocol(protocol, apply_fn, variables, images, labels, seed, batch_size, store, progress):
        seen[protocol.name] = {s.config.eps for s in protocol.stages} | {protocol.eps}
        return ProtocolResult(protocol, {"labels": labels, "clean_pred": labels, "adv_pred": labels,
                                         "broken_by": np.full(len(labels), -1, np.int16)}, seed)

    monkeypatch.setattr(evaluate_module, "run_protocol", fake_run_protocol)
    monkeypatch.setattr(evaluate_module, "_sanity", lambda *a, **k: [])
    for name in PROTOCOLS:
        result, err = _eval(capsys, run_dir, "--protocol", name, "--examples", 4)
        assert result["eps"] == RUN_EPS and result["eps_source"] == "the run's eval.attack.eps"
        assert f"eps={RUN_EPS}" in err and result["result_file"].endswith(f"{name}_eps{RUN_EPS}_n4.json")
        assert storage.read_json(result["result_file"])["eps"] == RUN_EPS
    assert seen == {name: {RUN_EPS} for name in PROTOCOLS}
    result, _ = _eval(capsys, run_dir, "--protocol", "cw20", "--examples", 4, "--eps", 0.2)
    assert seen["cw20"] == {0.2} and result["eps_source"] == "--eps"


def test_eps_overrides_take_effect_and_a_larger_eps_is_no_easier(run_dir, capsys):
    # FGSM steps its ε, so a larger ε is a strictly larger step (a weak 3-step PGD from a random
    # start need not be monotone in ε).
    small, _ = _eval(capsys, run_dir, "--attack", "fgsm", "--examples", 64)
    large, _ = _eval(capsys, run_dir, "--attack", "fgsm", "--examples", 64, "--eps", 0.4)
    via_set, _ = _eval(capsys, run_dir, "--attack", "fgsm", "--examples", 64, "--set", "eval.attack.eps=0.4")
    assert large["eps"] == large["attack"]["eps"] == large["attack"]["step_size"] == 0.4
    assert large["eps_source"] == "--eps" and via_set["eps"] == 0.4 and via_set["eps_source"] == "--set eval.attack.eps"
    assert large["robust_accuracy"] <= small["robust_accuracy"] <= small["natural_accuracy"]
    assert large["robust_accuracy"] < small["natural_accuracy"]
    assert large["robust_accuracy"] == via_set["robust_accuracy"]
    assert small["result_file"] != large["result_file"]                 # keyed by ε: nothing overwritten


@pytest.mark.parametrize("args,message", [
    (["--protocol", "cw20", "--set", "eval.attack.restarts=3"], "does not apply to protocol 'cw20'"),
    (["--eps", "0.2", "--set", "eval.attack.eps=0.3"], "disagree"),
    (["--set", "eval.test_examples=10"], "use --examples"),
    (["--set", "train.epochs=3"], "only override eval"),
    (["--set", "eval.attack.epss=3"], "did you mean 'eval.attack.eps'"),
])
def test_overrides_that_cannot_take_effect_are_refused(run_dir, capsys, args, message):
    assert main(["eval", str(run_dir), *args]) == 2
    assert message in capsys.readouterr().err


def test_examples_beyond_the_split_are_clipped_with_a_warning_and_results_keyed_by_size(run_dir, capsys):
    everything, err = _eval(capsys, run_dir, "--examples", 100000)
    assert "--examples 100000 but the test split has only 256 examples: evaluating 256" in err
    assert everything["num_examples"] == 256 and everything["examples_requested"] == 100000
    some, _ = _eval(capsys, run_dir, "--examples", 16)
    assert everything["result_file"].endswith(f"best_val_test_config_eps{RUN_EPS}_n256.json")
    assert some["result_file"].endswith("_n16.json")
    assert storage.read_json(everything["result_file"])["num_examples"] == 256  # not overwritten by the 16


def test_default_checkpoint_is_best_val_and_every_number_says_how_it_was_chosen(run_dir, capsys):
    result, err = _eval(capsys, run_dir, "--examples", 16)
    assert result["checkpoint"] == "best_val" and "validation" in result["checkpoint_selection"]
    assert result["epoch"] == 1
    summary_line = err.strip().splitlines()[-1]
    assert "robust accuracy" in summary_line and "checkpoint best_val" in summary_line
    assert f"eps={RUN_EPS}" in summary_line and "16 test examples" in summary_line
    paper, err = _eval(capsys, run_dir, "--examples", 16, "--checkpoint", "best_test")
    assert "the paper's protocol" in paper["checkpoint_selection"] and "optimistic" in err.splitlines()[-1]
