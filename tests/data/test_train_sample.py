"""data.train_sample: the first N images for every seed ("first"), or a class-balanced
draw seeded by train.seed ("seed"), recorded in the splits' metadata; old runs keep "first"."""

import numpy as np
import pytest

from nt_robust.config import load_config, to_dict
from nt_robust.data import load_dataset, train_val_split
from nt_robust.train import ExperimentConfig
from nt_robust.train.config import DataConfig
from nt_robust.train.splits import balanced_sample, prepare_splits
from nt_robust.train.run_dir import RunConfigMismatchError, RunDirectory


def rows(images: np.ndarray) -> set[bytes]:
    return {image.tobytes() for image in images}


def seeded(size: int = 42) -> DataConfig:
    return DataConfig(dataset="synthetic", val_size=16, train_subset=size, train_sample="seed")


def test_seeds_draw_different_samples_and_a_seed_draws_the_same_one():
    a, a_again, b = (prepare_splits(seeded(), sample_seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a.train_images, a_again.train_images)
    np.testing.assert_array_equal(a.train_labels, a_again.train_labels)
    assert rows(a.train_images) != rows(b.train_images)
    # the validation and test sets do not move with the seed
    np.testing.assert_array_equal(a.val_images, b.val_images)
    np.testing.assert_array_equal(a.test_images, b.test_images)
    # drawn from the training pool, never from the validation split
    pool_x, _, val_x, _ = train_val_split(*(lambda d: (d.train_images, d.train_labels))(load_dataset("synthetic")),
                                          16, seed=0)
    assert rows(a.train_images) <= rows(pool_x) and not rows(a.train_images) & rows(val_x)
    assert a.metadata["sample_seed"] == 0 and b.metadata["sample_seed"] == 1
    assert a.metadata["train_sample"] == "seed" and a.metadata["split_seed"] == 0


def test_the_sample_is_class_balanced_with_the_size_asked():
    for size in (40, 42, 7):   # 4 synthetic classes: 10 each; 10 or 11 (two 11s); 1 or 2 (three 2s)
        splits = prepare_splits(seeded(size), sample_seed=3)
        counts = np.bincount(splits.train_labels, minlength=4)
        assert counts.sum() == size == len(splits.train_images) == splits.metadata["train_examples"]
        assert set(counts) <= {size // 4, size // 4 + 1} and np.sum(counts == size // 4 + 1) == size % 4
        assert splits.metadata["train_class_counts"] == counts.tolist()


def test_balanced_sample_by_hand_and_a_class_too_small_is_a_clear_error():
    labels = np.array([2, 0, 0, 1, 1, 1, 0, 2, 2, 2])
    chosen = balanced_sample(labels, 6, seed=5, num_classes=3)
    assert list(chosen) == sorted(set(chosen.tolist())) and len(chosen) == 6
    assert np.bincount(labels[chosen], minlength=3).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="only 3 remain.*lower data.train_subset"):
        balanced_sample(labels, 12, seed=5, num_classes=3)   # 4 of each, class 0 and 1 have 3


def test_first_is_the_old_behaviour_whatever_the_seed():
    pool_x, pool_y, _, _ = train_val_split(load_dataset("synthetic").train_images,
                                           load_dataset("synthetic").train_labels, 16, seed=0)
    for seed in (None, 0, 7):
        splits = prepare_splits(DataConfig(dataset="synthetic", val_size=16, train_subset=42), sample_seed=seed)
        np.testing.assert_array_equal(splits.train_images, pool_x[:42])
        np.testing.assert_array_equal(splits.train_labels, pool_y[:42])
        assert splits.metadata["train_sample"] == "first" and splits.metadata["sample_seed"] is None


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="data.train_sample.*data.train_subset"):
        DataConfig(dataset="synthetic", train_sample="seed")
    with pytest.raises(ValueError, match="data.train_sample must be one of"):
        DataConfig(dataset="synthetic", train_subset=10, train_sample="random")
    with pytest.raises(ValueError, match="needs the seed"):
        prepare_splits(seeded())


def test_a_run_saved_before_the_option_resumes_as_first_and_records_both_seeds(tmp_path):
    config = load_config(ExperimentConfig, None, ["data.dataset=\"synthetic\"", "data.train_subset=42"])
    saved = to_dict(config)
    del saved["data"]["train_sample"]
    run = RunDirectory(tmp_path / "old")
    run.claim(saved, {})
    assert RunDirectory(tmp_path / "old").claim(to_dict(config), {}, write=False)   # "first" = what it ran
    drawn = load_config(ExperimentConfig, None, ["data.dataset=\"synthetic\"", "data.train_subset=42",
                                                 "data.train_sample=\"seed\"", "train.seed=4"])
    with pytest.raises(RunConfigMismatchError, match="data.train_sample"):
        RunDirectory(tmp_path / "old").claim(to_dict(drawn), {}, write=False)
    recorded = to_dict(drawn)
    assert recorded["data"]["train_sample"] == "seed" and recorded["train"]["seed"] == 4
    assert recorded["data"]["split_seed"] == 0
