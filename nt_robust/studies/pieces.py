"""A study split into K pieces that can run in separate sittings (``--pieces K --piece i``)::

    runs = piece_runs(study, pieces=5, piece=0)        # every 5th run, from index 0
    skipped = run_piece(study, pieces=5, piece=0)      # train them; {} when every run trained
    print(format_pieces(study, 5, estimate_cost(study)))  # estimated hours of each piece

Piece ``i`` holds the runs whose position in the study's run list (of the stages asked for)
is ``i`` modulo ``K``: round-robin, so every piece gets the same mix of widths and λ and
costs about the same. Runs are listed width by width, λ by λ and seed by seed, so with
``K`` = the number of seeds, piece ``i`` is exactly the ``i``-th seed: each finished piece is
a complete seed of the grid. Finished runs are skipped as ever, so a piece (or the whole
study) can be rerun to resume.
"""

from __future__ import annotations

import sys
from typing import Any

from nt_robust.config import ConfigError
from nt_robust.studies.sweep import RunSpec, Study, run_index


def check_piece(pieces: int | None, piece: int | None, need_piece: bool = True) -> None:
    """A clear error for an impossible ``--pieces`` / ``--piece`` pair (``need_piece``
    False: ``--pieces`` alone is fine, as with ``--estimate``)."""
    if piece is not None and pieces is None or (need_piece and pieces is not None and piece is None):
        raise ConfigError("give --pieces K and --piece i together (piece i of K, 0 <= i < K)")
    if pieces is not None and pieces < 1:
        raise ConfigError(f"--pieces {pieces}: need K >= 1")
    if piece is not None and not 0 <= piece < pieces:
        raise ConfigError(f"--piece {piece} of --pieces {pieces}: need 0 <= i < {pieces}")


def piece_runs(study: Study, pieces: int, piece: int, stages: tuple[str, ...] | None = None) -> list[RunSpec]:
    """The runs of piece ``piece`` of ``pieces`` (among the runs of ``stages``; None: all)."""
    check_piece(pieces, piece)
    runs = [r for r in study.runs() if stages is None or r.stage in stages]
    return runs[piece::pieces]


def run_piece(study: Study, pieces: int, piece: int, stages: tuple[str, ...] | None = None) -> dict[str, list[str]]:
    """Train the runs of piece ``piece`` of ``pieces`` one after another. A run that diverges,
    or that another process is training (``--index``), is named on stderr and the piece goes
    on; returns the names of such runs by what happened to them (empty: every run trained)."""
    from nt_robust.train.loop import TrainingDivergedError
    from nt_robust.train.run_dir import RunDirectoryLockedError

    diverged, busy = [], []
    for run in piece_runs(study, pieces, piece, stages):
        try:
            run_index(study, run.index)
        except TrainingDivergedError as error:   # one run's fate; the piece goes on
            print(f"{run.name} (index {run.index}) diverged, the piece goes on: {error}", file=sys.stderr)
            diverged.append(run.name)
        except RunDirectoryLockedError as error:  # another sitting trains it (e.g. --index): leave it
            print(f"{run.name} (index {run.index}) skipped: {error}", file=sys.stderr)
            busy.append(run.name)
    return {what: names for what, names in (("diverged", diverged), ("trained by another process, skipped", busy))
            if names}


def piece_hours(study: Study, pieces: int, estimates: list[dict[str, Any]]) -> list[float]:
    """Estimated hours of each piece, from :func:`~nt_robust.studies.cost.estimate_cost`'s
    hours per run of each width."""
    per_run = {e["width"]: e["hours_per_run"] for e in estimates}
    return [sum(per_run[r.width] for r in piece_runs(study, pieces, i)) for i in range(pieces)]


def format_pieces(study: Study, pieces: int, estimates: list[dict[str, Any]]) -> str:
    """One line per piece: its runs, unfinished runs and estimated hours."""
    hours = piece_hours(study, pieces, estimates)
    lines = [f"In {pieces} pieces (--pieces {pieces} --piece i):"]
    for i, h in enumerate(hours):
        runs = piece_runs(study, pieces, i)
        left = sum(not study.is_finished(r) for r in runs)
        lines.append(f"  piece {i}: {len(runs)} runs ({left} unfinished), {h:.2f} h estimated")
    return "\n".join(lines)
