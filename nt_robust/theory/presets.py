"""Sizes of the theory experiments: ``cpu`` (< 30 min on 2 cores), ``gpu`` (wider), ``smoke``.

    from nt_robust.theory.presets import get_preset
    p = get_preset("cpu"); p.init_widths, p.train_widths[3], p.train_seeds
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    depths: tuple[int, ...]
    init_widths: tuple[int, ...]            # gradient at initialization
    init_seeds: int
    init_points: int
    ntk_widths: tuple[int, ...]             # empirical NTK vs closed form
    ntk_seeds: int
    ntk_points: int
    train_widths: dict[int, tuple[int, ...]]  # depth -> widths for lazy training
    train_seeds: int
    n_train: int
    n_test: int
    steps: int
    eps_grid: tuple[float, ...]             # ℓ∞ radii on the unit sphere
    trades_widths: tuple[int, ...]
    trades_steps: int
    trades_lam: float
    memory_sizes: tuple[int, ...]
    bound_seeds: int = 2                    # certified-bound growth: inits per width
    spectral_seeds: int = 2                 # … of which the spectral-norm product is computed for
    spectral_max_width: int = 2048          # (eigvalsh of an m×m Gram matrix: 27 s at m = 4096 on 2 cores)
    trades_seeds: int = 1
    # conv nets (experiments/theory_conv.py): WRN-conv_depth-k, SmallCNN x k, the stax analogue
    conv_widths: tuple[int, ...] = (1, 2, 4, 8)
    conv_seeds: int = 3                     # inits per width for the empirical NTKs
    conv_ntk_points: int = 16               # images in each empirical NTK
    conv_grad_seeds: int = 8                # inits per width for E‖∇f‖² and the |W| bound
    conv_grad_points: int = 8               # images for gradients (the kernel prediction: the first 4)
    conv_train_widths: tuple[int, ...] = (1, 2, 4)
    conv_train_seeds: int = 3                # (the stability verdicts' seed part has train_seeds − 1 dof)
    conv_train_steps: int = 60
    conv_depth: int = 10
    conv_downsample: int = 2                # 28x28 -> 14x14
    conv_stability_points: int = 64         # test images of the PGD stability (wrn, cnn; init and trained)
    conv_eps: float = 0.1                   # L∞ radius of that attack, pixel units (the quick study's ε)


_W = tuple(2**k for k in range(6, 14))  # 64 … 8192

PRESETS = {
    "cpu": Preset("cpu", (2, 3, 5), _W, 12, 64, _W[:6], 4, 8,
                  {2: _W[:5], 3: _W[:4], 5: _W[:3]}, 2, 256, 256, 200,
                  (1e-4, 1e-3), (64, 256, 1024), 100, 6.0, (1000, 2000, 5000),
                  bound_seeds=16, spectral_seeds=4, spectral_max_width=2048, trades_seeds=1),
    "gpu": Preset("gpu", (2, 3, 5), _W, 32, 128, _W, 8, 16,
                  {2: _W, 3: _W, 5: _W[:7]}, 8, 512, 512, 400,
                  (1e-4, 3e-4, 1e-3, 3e-3), (64, 256, 1024, 4096), 300, 6.0, (1000, 5000, 10000, 20000),
                  bound_seeds=32, spectral_seeds=8, spectral_max_width=8192, trades_seeds=8,
                  conv_widths=(1, 2, 4, 8, 16), conv_seeds=6, conv_ntk_points=32, conv_grad_seeds=16,
                  conv_grad_points=16, conv_train_widths=(1, 2, 4, 8, 16), conv_train_seeds=4,
                  conv_train_steps=400, conv_stability_points=256),
    "smoke": Preset("smoke", (2, 3), _W[:3], 2, 8, _W[:3], 2, 4,
                    {2: _W[:3], 3: _W[:2]}, 1, 32, 32, 20,
                    (1e-4, 1e-3), (64, 128), 5, 6.0, (200,),
                    bound_seeds=2, spectral_seeds=2, spectral_max_width=128, trades_seeds=2,
                    conv_widths=(1, 2), conv_seeds=2, conv_ntk_points=4, conv_grad_seeds=2, conv_grad_points=2,
                    conv_train_widths=(1, 2), conv_train_seeds=2, conv_train_steps=3, conv_downsample=4,
                    conv_stability_points=8),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]
