"""experiments/build_regime_map.py: which regimes a default call trains (the commands it would
run, recorded instead of run)."""

import importlib.util
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _driver():
    spec = importlib.util.spec_from_file_location("build_regime_map", REPO / "experiments" / "build_regime_map.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _trained(argv, monkeypatch, tmp_path):
    driver = _driver()
    commands = []
    monkeypatch.setattr(subprocess, "run", lambda command, cwd=None: commands.append(command)
                        or subprocess.CompletedProcess(command, 0))
    assert driver.main([*argv, "--runs-root", str(tmp_path), "--out", str(tmp_path / "map")]) == 0
    return [c[c.index("study") + 1] for c in commands if "study" in c], commands


def test_a_default_call_trains_every_short_regime_and_no_long_training_preset(monkeypatch, tmp_path):
    trained, commands = _trained([], monkeypatch, tmp_path)
    specs = sorted(str(p.relative_to(REPO)) for p in (REPO / "experiments").glob("regime_*.toml"))
    long = [s for s in specs if Path(s).stem.endswith("_overfit")]
    assert long and trained == [s for s in specs if s not in long]
    assert [c for c in commands if "map" in c][0][-len(specs) - 4:-4] == specs  # all of them are drawn


def test_a_long_training_preset_named_with_only_is_trained(monkeypatch, tmp_path):
    trained, _ = _trained(["--only", "regime_mlp_n2000_overfit"], monkeypatch, tmp_path)
    assert trained == ["experiments/regime_mlp_n2000_overfit.toml"]
