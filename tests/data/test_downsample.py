"""data.downsample: block means rounded to uint8, on every split, with clear errors."""

import json

import numpy as np
import pytest

from nt_robust.config import load_config, to_dict
from nt_robust.data.resize import block_mean, downsample_uint8
from nt_robust.train import ExperimentConfig
from nt_robust.train.config import DataConfig, input_shape
from nt_robust.train.splits import prepare_splits
from nt_robust.train.run_dir import RunDirectory


def loop_reference(images: np.ndarray, f: int) -> np.ndarray:
    """The block mean written out pixel by pixel."""
    n, h, w, c = images.shape
    out = np.zeros((n, h // f, w // f, c))
    for a in range(n):
        for i in range(h // f):
            for j in range(w // f):
                for k in range(c):
                    out[a, i, j, k] = images[a, i * f:(i + 1) * f, j * f:(j + 1) * f, k].astype(np.float64).mean()
    return out


def test_block_mean_and_its_uint8_rounding_match_a_loop():
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 2), dtype=np.uint8)
    for f in (1, 2, 4):
        np.testing.assert_allclose(block_mean(images, f), loop_reference(images, f))
        small = downsample_uint8(images, f)
        assert small.dtype == np.uint8
        assert np.max(np.abs(small - loop_reference(images, f))) <= 0.5
    np.testing.assert_array_equal(downsample_uint8(np.full((1, 2, 2, 1), 255, np.uint8), 2), [[[[255]]]])
    with pytest.raises(ValueError, match="positive divisor"):
        block_mean(images, 3)
    with pytest.raises(ValueError, match="NHWC"):
        block_mean(images[0], 2)


def test_every_split_is_downsampled_and_recorded():
    full = prepare_splits(DataConfig(dataset="synthetic", val_size=16))
    half = prepare_splits(DataConfig(dataset="synthetic", val_size=16, downsample=2))
    assert half.image_shape == (4, 4, 1) == input_shape(DataConfig(dataset="synthetic", downsample=2))[0]
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(half, f"{split}_images"),
                                      downsample_uint8(getattr(full, f"{split}_images"), 2))
        np.testing.assert_array_equal(getattr(half, f"{split}_labels"), getattr(full, f"{split}_labels"))
    assert half.metadata["downsample"] == 2 and half.metadata["image_shape"] == [4, 4, 1]


def test_impossible_factors_are_clear_errors():
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="data.downsample"):
            DataConfig(dataset="synthetic", downsample=bad)
    with pytest.raises(ValueError, match="does not divide"):
        prepare_splits(DataConfig(dataset="synthetic", val_size=16, downsample=3))   # 8x8 images


def test_a_run_saved_before_the_option_resumes_at_full_size(tmp_path):
    today = to_dict(load_config(ExperimentConfig, None, ["data.dataset='synthetic'"]))
    old = {**today, "data": {k: v for k, v in today["data"].items() if k != "downsample"}}
    run = RunDirectory(tmp_path / "run")
    run.root.mkdir()
    (run.root / "config.json").write_text(json.dumps(old))
    assert run.claim(today, {}, write=False)
    with pytest.raises(Exception, match="data.downsample"):
        run.claim(to_dict(load_config(ExperimentConfig, None, ["data.dataset='synthetic'", "data.downsample=2"])),
                  {}, write=False)
