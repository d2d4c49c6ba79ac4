"""One command line for the theory experiments (``experiments/theory_*.py``).

A script defines what it measures, how it fits and what it draws, and hands them to
:class:`TheoryExperiment`; the runner parses ``--preset``/``--out`` (and ``--resummarize``
or the script's own modes), times the measurement, adds the fits as ``result["fits"]``
and the wall time as ``result["seconds"]``, writes ``OUT/<name>.json`` and draws the
figures::

    EXPERIMENT = TheoryExperiment("ntk_convergence", __doc__, measure, summarize, plot)

    if __name__ == "__main__":
        EXPERIMENT.main()        # python experiments/theory_ntk_convergence.py --preset smoke --out /tmp/t

``EXPERIMENT.main(argv)`` returns the result it wrote; ``experiments/theory_all.py`` calls it
once per stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import Callable, Mapping

from nt_robust.storage import read_json, write_json
from nt_robust.theory.presets import PRESETS

Measure = Callable[[str, str], dict]    # (preset name, output folder) -> result


@dataclasses.dataclass(frozen=True)
class TheoryExperiment:
    """A theory experiment: ``measure(preset, out_dir)`` gives the result (the folder is
    for progress files; the runner writes the final JSON), ``summarize(result)`` its fits,
    ``plot(result, out_dir)`` the figures (``result["fits"]`` already set).

    ``resummarize(result)``: recompute the fits from ``OUT/<name>.json`` without measuring
    (its docstring's first line is the ``--resummarize`` help); the figures are drawn again
    unless ``replot`` is False. ``modes``: more flags (``"--flag"``), each ``fn(preset, out_dir)``
    returning the result (help: its docstring's first line). ``partial``: ``measure``
    writes progress to :meth:`partial_path`, removed once the final JSON is written.
    """

    name: str
    description: str
    measure: Measure
    summarize: Callable[[dict], dict] | None = None
    plot: Callable[[dict, str], None] | None = None
    resummarize: Callable[[dict], dict] | None = None
    replot: bool = True
    modes: Mapping[str, Measure] = dataclasses.field(default_factory=dict)
    partial: bool = False

    def path(self, out_dir: str) -> str:
        """``OUT/<name>.json``, the result file."""
        return f"{out_dir}/{self.name}.json"

    def partial_path(self, out_dir: str) -> str:
        """``OUT/<name>.partial.json``, where a long measurement leaves what it has so far."""
        return f"{out_dir}/{self.name}.partial.json"

    def parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(description=self.description,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS),
                            help="widths, depths and seeds (nt_robust.theory.presets; default cpu)")
        parser.add_argument("--out", default="figures/theory", help="output folder (default figures/theory)")
        for flag, fn in self.modes.items():
            parser.add_argument(flag, action="store_true", help=_first_line(fn))
        if self.resummarize is not None:
            parser.add_argument("--resummarize", action="store_true", help=_first_line(self.resummarize))
        return parser

    def main(self, argv: list[str] | None = None) -> dict:
        """Parse ``argv`` (default: the command line), run, write ``OUT/<name>.json``; returns the result."""
        args = self.parser().parse_args(argv)
        if self.resummarize is not None and args.resummarize:
            result = self.resummarize(read_json(self.path(args.out)))
            write_json(self.path(args.out), result)
            if self.plot is not None and self.replot:
                self.plot(result, args.out)
            return result
        for flag, fn in self.modes.items():
            if getattr(args, flag.lstrip("-").replace("-", "_")):
                return fn(args.preset, args.out)
        start = time.time()
        result = self.measure(args.preset, args.out)
        if self.summarize is not None:
            result["fits"] = self.summarize(result)
        result["seconds"] = time.time() - start
        write_json(self.path(args.out), result)
        if self.partial and os.path.exists(self.partial_path(args.out)):
            os.remove(self.partial_path(args.out))
        if self.plot is not None:
            self.plot(result, args.out)
        return result


def _first_line(fn: Callable) -> str | None:
    doc = (fn.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else None
