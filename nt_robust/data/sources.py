"""Where dataset files are looked for, in order, and what to say when they are not.

Search order for dataset ``name``:

1. the explicit ``data_dir`` argument, then ``data_dir/<name>``;
2. ``$NT_ROBUST_DATA_DIR``, then ``$NT_ROBUST_DATA_DIR/<name>``;
3. the user cache ``$XDG_CACHE_HOME/nt_robust/<name>`` (``~/.cache/...``);
4. system directories from :data:`SYSTEM_DIRS` (Debian's Fashion-MNIST).

Example::

    location, searched = locate(get_spec("fashion_mnist"), data_dir=None)
"""

from __future__ import annotations

import os
from pathlib import Path

from .cifar import find_cifar
from .idx import IDX_FILES, missing_idx_files
from .specs import DatasetSpec

__all__ = ["DATA_DIR_ENV", "DATA_DIR_SETTING", "SYSTEM_DIRS", "cache_dir", "candidate_dirs", "locate", "probe",
           "not_found_message"]

DATA_DIR_ENV = "NT_ROBUST_DATA_DIR"
DATA_DIR_SETTING = "data.data_dir"  # the config key (nt-robust ... --set data.data_dir=DIR)
# Module-level so tests (and odd installations) can change it.
SYSTEM_DIRS: dict[str, tuple[str, ...]] = {
    "fashion_mnist": ("/usr/share/datasets/fashion-mnist",),
}

Searched = list[tuple[Path, str]]  # (directory, what was found there)


def cache_dir(name: str) -> Path:
    """The per-user cache directory of dataset ``name`` (where downloads go)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return root / "nt_robust" / name


def candidate_dirs(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    """Directories to search, in priority order, without duplicates."""
    dirs: list[Path] = []
    for root in (data_dir, os.environ.get(DATA_DIR_ENV) or None):
        if root is not None:
            root = Path(root).expanduser()
            dirs += [root, root / name]
    dirs.append(cache_dir(name))
    dirs += [Path(d) for d in SYSTEM_DIRS.get(name, ())]
    return list(dict.fromkeys(dirs))


def probe(spec: DatasetSpec, directory: Path) -> tuple[Path | None, str]:
    """The usable location in ``directory`` (or None) and a note on what was there."""
    if not directory.is_dir():
        return None, "does not exist"
    if spec.format == "cifar":
        return find_cifar(directory, spec.cifar_layout)
    missing = missing_idx_files(directory)
    if not missing:
        return directory, "found"
    if len(missing) == len(IDX_FILES):
        return None, "no dataset files"
    return None, f"incomplete, lacks {', '.join(missing)}"


def locate(spec: DatasetSpec, data_dir: str | os.PathLike | None) -> tuple[Path | None, Searched]:
    """First usable location of ``spec``'s files, and every place looked at."""
    searched: Searched = []
    for directory in candidate_dirs(spec.name, data_dir):
        location, note = probe(spec, directory)
        searched.append((directory, note))
        if location is not None:
            return location, searched
    return None, searched


def not_found_message(spec: DatasetSpec, searched: Searched, download_note: str) -> str:
    """A message that says where we looked, what we need, and how to fix it."""
    lines = [f"Could not find the {spec.name} dataset. Looked in:"]
    lines += [f"  - {directory} ({note})" for directory, note in searched]
    lines += ["Expected files:"] + [f"  - {f}" for f in _expected_files(spec)]
    lines += [f"Download: {download_note}", "Official URLs:"]
    lines += [f"  - {spec.url(f)}" for f in spec.download_files]
    lines += [
        "How to fix:",
        f"  - put the files in a directory DIR and pass --set {DATA_DIR_SETTING}=DIR to nt-robust train "
        f"(load_dataset(..., data_dir=DIR) in Python), or set {DATA_DIR_ENV}=DIR; "
        f"DIR or DIR/{spec.name} is searched",
        f"  - or copy them into {cache_dir(spec.name)}",
        "  - or allow downloading on a machine with internet access: unset NT_ROBUST_OFFLINE "
        "and NT_ROBUST_DOWNLOAD (load_dataset(..., download=True) in Python)",
    ]
    lines += [f"  - {fix}" for fix in spec.extra_fixes]
    return "\n".join(lines)


def _expected_files(spec: DatasetSpec) -> list[str]:
    if spec.format == "cifar":
        layout = spec.cifar_layout
        return [
            f"{layout.archive} (the binary version, as downloaded), or its extracted "
            f"folder {layout.folder}/ with {', '.join(layout.members)}"
        ]
    return [f"{f} (gzip-compressed, as downloaded)" for f in IDX_FILES]
