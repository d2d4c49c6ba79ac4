"""A width study over imported checkpoints (nt_robust.studies.imported; issue 37, item 2), end to
end: tiny RobustBench WideResNets of widths 1, 2 and 4 made with torch, saved as state_dicts
(one imported beforehand, two imported by the study), on synthetic CIFAR-shaped data (32 x 32 x 3,
10 classes, in place of the CIFAR-10 files). Skipped without torch.

Independent truths: each model's natural accuracy from PyTorch's own logits on the same images;
the claims' slopes from numpy's least squares against log2 width; the test-image standard error
by hand; refusals that write nothing.
"""

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nt_robust.cli import main  # noqa: E402
from nt_robust.config import ConfigError  # noqa: E402
from nt_robust.data import make_synthetic_dataset  # noqa: E402
from nt_robust.export import nhwc_to_nchw  # noqa: E402
from nt_robust.export.importer import import_state_dict  # noqa: E402
from nt_robust.studies.imported import load_imported_study  # noqa: E402
from test_import import random_robustbench, scaled  # noqa: E402

WIDTHS = (1, 2, 4)
EXAMPLES = 24
DATA = dataclasses.replace(make_synthetic_dataset(num_train=256, num_test=EXAMPLES, image_shape=(32, 32, 3),
                                                  num_classes=10, seed=3), name="cifar10")


@pytest.fixture()
def zoo(tmp_path, monkeypatch):
    """State_dicts of WRN-10-{1,2,4}, the torch modules, and CIFAR-10 replaced by DATA."""
    import nt_robust.train.splits as train_data

    monkeypatch.setattr(train_data, "load_dataset", lambda name, data_dir=None: DATA)
    x = DATA.test_images.astype(np.float32) / 255.0
    modules = {}
    for width in WIDTHS:
        module = scaled(random_robustbench(10, width), x)
        torch.save(module.state_dict(), tmp_path / f"wrn-10-{width}.pt")
        modules[width] = module
    import_state_dict(tmp_path / "wrn-10-4.pt", tmp_path / "imported" / "wide", dataset="cifar10")
    return tmp_path, modules, x


def _spec(tmp_path, models: str, study_extra: str = "") -> str:
    spec = tmp_path / "zoo.toml"
    spec.write_text(f'''[study]
name = "tiny_zoo"
dataset = "cifar10"
eps = "8/255"
attack = "pgd20"
examples = {EXAMPLES}
set = ["eval.attack.num_steps=2", "eval.batch_size=8", "eval.lipschitz_eps=0.01"]
sanity = false
{study_extra}
{models}''')
    return str(spec)


MODELS = '''[[model]]
name = "narrow"
state_dict = "wrn-10-1.pt"
width = 1
[[model]]
name = "middle"
state_dict = "wrn-10-2.pt"
depth = 10
[[model]]
name = "wide"
dir = "imported/wide"
'''


def test_width_study_over_imported_state_dicts_end_to_end(zoo, capsys, monkeypatch):
    tmp_path, modules, x = zoo
    out = tmp_path / "study"
    assert main(["study-imported", _spec(tmp_path, MODELS), "--out", str(out)]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "claim 1:" in printed and f"report: {out / 'report.md'}" in printed
    rows = {r["run"]: r for r in json.loads((out / "results.json").read_text())}
    assert {r["width"] for r in rows.values()} == set(WIDTHS) and {r["depth"] for r in rows.values()} == {10}
    assert (out / "models" / "narrow" / "imported.json").exists() and not (out / "models" / "wide").exists()
    per_width = {}
    for name, row in rows.items():
        assert row["examples"] == EXAMPLES and row["norm"] == "linf" and row["eps_text"] == "8/255"
        assert row["test_robust_accuracy"] <= row["test_natural_accuracy"]
        arrays = np.load(out / "evaluations" / f"{name}.npz")
        with torch.no_grad():
            logits = modules[row["width"]](torch.from_numpy(nhwc_to_nchw(x))).numpy()
        top2 = np.sort(logits, 1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 1e-4              # argmax not decided by float32 rounding
        assert clear.sum() >= EXAMPLES - 2
        np.testing.assert_array_equal(arrays["clean_pred"][clear], logits.argmax(1)[clear])   # PyTorch agrees
        per_width[row["width"]] = {"natural": (arrays["clean_pred"] == arrays["labels"]).astype(float),
                                   "stable": (arrays["clean_pred"] == arrays["adv_pred"]).astype(float)}
        assert "lipschitz" in arrays and np.all(np.isfinite(arrays["lipschitz"]))
    claims = {c["number"]: c for c in json.loads((out / "claims.json").read_text())}
    assert {n: claims[n]["verdict"] for n in (5, 6, 7, 8)} == dict.fromkeys((5, 6, 7, 8), "not evaluated")
    assert all(claims[n]["verdict"] in ("supported", "contradicted", "inconclusive") for n in (1, 2, 3, 4))
    # claim 1's primary test: the least-squares slope against log2 width, per test image
    natural = np.stack([per_width[w]["natural"] for w in WIDTHS])             # (widths, images)
    per_image = np.array([np.polyfit(np.log2(WIDTHS), natural[:, i], 1)[0] for i in range(EXAMPLES)])
    test = claims[1]["tests"][0]
    assert test["estimate"] == pytest.approx(per_image.mean(), abs=1e-12)
    assert test["se"] == pytest.approx(per_image.std(ddof=1) / np.sqrt(EXAMPLES), rel=1e-9)
    assert test["low"] == pytest.approx(per_image.mean() - 1.959964 * test["se"], abs=1e-6)
    assert len(claims[3]["tests"]) == 1 + len(WIDTHS) - 1                     # the slope and two steps
    report = (out / "report.md").read_text()
    assert "conditional on these checkpoints" in report and "| narrow | 10 | 1 |" in report
    evaluated = json.loads((out / "evaluations" / "narrow.json").read_text())["result"]
    assert evaluated["attack"]["num_steps"] == 2 and evaluated["attack"]["step_size"] == pytest.approx(2 / 255)
    # a second run reuses every stored evaluation (and the imported directories)
    import nt_robust.studies.imported as imported
    stored = {p.name: p.stat().st_mtime_ns for p in (out / "evaluations").iterdir()}
    monkeypatch.setattr(imported, "_measure", lambda *a: pytest.fail("evaluated again"))
    assert main(["study-imported", _spec(tmp_path, MODELS), "--out", str(out)]) == 0
    assert stored == {p.name: p.stat().st_mtime_ns for p in (out / "evaluations").iterdir()}


def test_the_example_spec_loads():
    from pathlib import Path
    study = load_imported_study(Path(__file__).parents[2] / "experiments" / "zoo_widths.toml")
    assert [(m.depth, m.width) for m in study.models] == [(28, 10), (70, 16)] and study.examples == 1000


def test_bad_specs_and_files_are_refused_with_the_fix(zoo, capsys):
    tmp_path, _, _ = zoo
    one = '[[model]]\nstate_dict = "wrn-10-1.pt"\n'
    with pytest.raises(ConfigError, match="at least two models"):
        load_imported_study(_spec(tmp_path, one))
    both = '[[model]]\nstate_dict = "wrn-10-1.pt"\ndir = "imported/wide"\n' + MODELS
    with pytest.raises(ConfigError, match="exactly one of dir"):
        load_imported_study(_spec(tmp_path, both))
    bad_attack = tmp_path / "bad_attack.toml"
    bad_attack.write_text(open(_spec(tmp_path, MODELS)).read().replace('attack = "pgd20"', 'attack = "autoattack"'))
    with pytest.raises(ConfigError, match="not an eval preset"):
        load_imported_study(bad_attack)
    wrong_width = MODELS.replace("width = 1", "width = 3")
    out = tmp_path / "refused"
    assert main(["study-imported", _spec(tmp_path, wrong_width), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "WideResNet-10-1" in err and "width 3" in err and "Traceback" not in err
    assert not (out / "models" / "narrow").exists()                         # nothing written for it
    same = MODELS.replace('"wrn-10-2.pt"', '"wrn-10-1.pt"').replace('dir = "imported/wide"', 'state_dict = "wrn-10-1.pt"')
    assert main(["study-imported", _spec(tmp_path, same), "--out", str(tmp_path / "one_width")]) == 2
    assert "needs two widths" in capsys.readouterr().err
