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


_W = tuple(2**k for k in range(6, 14))  # 64 … 8192

PRESETS = {
    "cpu": Preset("cpu", (2, 3, 5), _W, 12, 64, _W[:6], 4, 8,
                  {2: _W[:5], 3: _W[:4], 5: _W[:3]}, 2, 256, 256, 200,
                  (1e-4, 1e-3), (64, 256, 1024), 100, 6.0, (1000, 2000, 5000),
                  bound_seeds=16, spectral_seeds=4, spectral_max_width=2048, trades_seeds=1),
    "gpu": Preset("gpu", (2, 3, 5), _W, 32, 128, _W, 8, 16,
                  {2: _W, 3: _W, 5: _W[:7]}, 8, 512, 512, 400,
                  (1e-4, 3e-4, 1e-3, 3e-3), (64, 256, 1024, 4096), 300, 6.0, (1000, 5000, 10000, 20000),
                  bound_seeds=32, spectral_seeds=8, spectral_max_width=8192, trades_seeds=8),
    "smoke": Preset("smoke", (2, 3), _W[:3], 2, 8, _W[:3], 2, 4,
                    {2: _W[:3], 3: _W[:2]}, 1, 32, 32, 20,
                    (1e-4, 1e-3), (64, 128), 5, 6.0, (200,),
                    bound_seeds=2, spectral_seeds=2, spectral_max_width=128, trades_seeds=2),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]
