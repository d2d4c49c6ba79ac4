"""Both readings of a run (final epoch, best held-out checkpoint) are stored by training, and
missing ones are recomputed from the checkpoints equal to what training wrote."""

import shutil

import numpy as np
import pytest

from nt_robust import storage
from nt_robust.train.readings import READINGS, fill_readings, missing_readings, reading_path


def test_training_stores_both_readings(tiny_run):
    assert missing_readings(tiny_run) == []
    summary = storage.read_json(tiny_run / "summary.json")
    for reading, (checkpoint, key) in READINGS.items():
        assert (tiny_run / "checkpoints" / checkpoint).is_dir()
        for split in ("val", "test"):
            with np.load(reading_path(tiny_run, reading, split)) as arrays:
                robust = float(np.mean(arrays["adv_pred"] == arrays["labels"]))
                assert {"labels", "clean_pred", "adv_pred", "clean_margin"} <= set(arrays)
            assert summary[key][f"{split}_robust_accuracy"] == pytest.approx(robust)


def test_missing_readings_are_recomputed_as_training_wrote_them(tiny_run, tmp_path, capsys):
    from nt_robust.cli import main

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    original = {(r, s): dict(np.load(reading_path(run, r, s))) for r in READINGS for s in ("val", "test")}
    summary = storage.read_json(run / "summary.json")
    reading_path(run, "final", "test").unlink()
    reading_path(run, "best_val", "val").unlink()
    reading_path(run, "best_val", "test").unlink()
    trimmed = {**summary, "final": {k: v for k, v in summary["final"].items() if not k.startswith("test_")}}
    storage.write_json(run / "summary.json", trimmed)
    assert missing_readings(run) == [("final", "test"), ("best_val", "val"), ("best_val", "test")]
    assert main(["eval", str(run), "--readings"]) == 0
    assert "computed final_test, best_val_val, best_val_test (3 files)" in capsys.readouterr().out
    assert missing_readings(run) == []
    for (reading, split), arrays in original.items():
        with np.load(reading_path(run, reading, split)) as again:
            assert set(again) == set(arrays)
            for name, values in arrays.items():
                np.testing.assert_array_equal(again[name], values, err_msg=f"{reading}_{split}: {name}")
    refilled = storage.read_json(run / "summary.json")["final"]
    for key in ("test_natural_accuracy", "test_robust_accuracy", "test_perturbation_stability"):
        assert refilled[key] == pytest.approx(summary["final"][key])
    assert fill_readings(run) == []   # nothing left to do


def test_a_directory_without_a_finished_run_is_a_clear_error(tmp_path, capsys):
    from nt_robust.cli import main

    with pytest.raises(FileNotFoundError, match="no finished run"):
        missing_readings(tmp_path)
    assert main(["eval", str(tmp_path), "--readings"]) != 0
    assert "no finished run" in capsys.readouterr().err
