"""The README and docs/ against the code: references, layout, flags, config keys, environment
variables, install pins, and the README's own ``nt-robust`` command lines, run for real (tiny
settings) or as dry runs. A doc that drifts from the code fails here."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path


from nt_robust.cli_parser import build_parser
from nt_robust.train import ExperimentConfig
from nt_robust.train.config import DATASETS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
DOC_FILES = [README, *DOCS]
ENV_VAR = re.compile(r"NT_ROBUST_[A-Z0-9_]*[A-Z0-9]")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*(?![\w])")  # --xla_cpu_... (XLA's flags) excluded
SET_KEY = re.compile(r"--set[ =]+['\"]?([a-z_]+\.[\w.]*)=")
# Flags of other tools that the docs show (pip, sbatch, XLA_FLAGS=--help).
EXTERNAL_FLAGS = {"--no-deps", "--upgrade", "--quiet", "--help", "--index-url", "--dependency",
                  "--signal", "--requeue",
                  # sbatch's and gcloud's, in the README's "On a cluster"
                  "--ntasks-per-node", "--kill-on-invalid-dep", "--open-mode", "--worker", "--command", "--version"}
FILE_SUFFIXES = ("py", "md", "toml", "json", "jsonl", "npz", "png", "pdf", "csv", "txt", "log")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _section(text: str, heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README has no '## {heading}' section"
    return match.group(1)


def _code_lines(text: str) -> list[str]:
    """Lines of fenced and 4-space-indented code blocks, with backslash continuations joined."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or (line.startswith("    ") and line.strip()):
            lines.append(line.strip())
    joined: list[str] = []
    for line in lines:
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + " " + line
        else:
            joined.append(line)
    return joined


def _inline_spans(text: str) -> list[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", text)]


def _snippets(text: str) -> list[str]:
    return _code_lines(text) + _inline_spans(text)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


def _nt_robust_argv(snippet: str) -> list[str] | None:
    """The arguments after ``nt-robust`` in a snippet that is an nt-robust command, else None."""
    match = re.match(r"(?:\S*/)?nt-robust\s+(.*)$", snippet)
    if not match:
        return None
    try:
        argv = shlex.split(match.group(1), comments=True)
    except ValueError:
        argv = match.group(1).split("#")[0].split()
    return argv or None


def _resolves(key: str) -> bool:
    """Does ``section.key[.subkey]`` name a field of the experiment config?"""
    section: type | None = ExperimentConfig
    for part in key.split("."):
        fields = {f.name: f for f in dataclasses.fields(section)} if section else {}
        if part not in fields:
            return False
        default = fields[part].default
        section = type(default) if dataclasses.is_dataclass(default) else None
    return True


def _script_sources() -> dict[str, str]:
    scripts = [*ROOT.glob("benchmarks/*.py"), *ROOT.glob("experiments/*.py")]
    runner = _text(ROOT / "nt_robust" / "theory" / "experiment.py")  # --preset, --out, --resummarize of theory_*.py
    return {str(p.relative_to(ROOT)): _text(p) + (runner if "TheoryExperiment(" in _text(p) else "") for p in scripts}


# 1. No references to files outside the repository.

def _checked_files() -> list[Path]:
    patterns = ["README.md", "Makefile", "pyproject.toml", "setup.py", "docs/*.md", "nt_robust/**/*.py",
                "experiments/*", "benchmarks/*", "figures/**/*.md", "tests/**/*.py", ".ci/*"]
    files = {p for pattern in patterns for p in ROOT.glob(pattern) if p.is_file()}
    return sorted(files - {Path(__file__).resolve()})


def test_no_references_outside_the_repository():
    offenders = []
    for path in _checked_files():
        for number, line in enumerate(_text(path).splitlines(), 1):
            if re.search(r"\.\./shared|PAPER\.md|DESIGN\.md", line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "point to docs/paper.md or docs/design.md instead:\n" + "\n".join(offenders)


def test_markdown_links_resolve():
    broken = []
    for path in DOC_FILES:
        for target in re.findall(r"\]\(([^)\s]+)\)", _text(path)):
            target = target.split("#")[0]
            if target and not re.match(r"[a-z]+:", target) and not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_test_files_and_tests_the_docs_name_exist():
    # docs/reliability.md names the test of every fault; a renamed file or test must not leave it stale.
    missing = []
    for path in DOC_FILES:
        for name, test in re.findall(r"(tests/[\w/]+\.py)(?:::(\w+))?", _text(path)):
            if not (ROOT / name).exists():
                missing.append(f"{path.relative_to(ROOT)} -> {name}")
            elif test and not re.search(rf"^def {test}\(", _text(ROOT / name), re.MULTILINE):
                missing.append(f"{path.relative_to(ROOT)} -> {name}::{test}")
    assert not missing, missing


# 2. The README's layout names every module, subpackage and document.

def test_readme_layout_names_every_module_subpackage_and_doc():
    layout = _section(_text(README), "Layout")
    named = set(re.findall(r"^\s+([\w.]+/?)\s", layout + "\n", re.M))
    package = ROOT / "nt_robust"
    entries = {p.name + "/" for p in package.iterdir() if (p / "__init__.py").is_file()}
    entries |= {p.name for p in package.glob("*.py") if p.name != "__init__.py"}
    entries |= {p.name for p in DOCS}
    assert not entries - named, f"README layout lacks {sorted(entries - named)}"
    listed_modules = {n for n in named if n.endswith(".py") and not (package / n).exists()}
    listed_docs = {n for n in named if n.endswith(".md") and not (ROOT / "docs" / n).exists()}
    assert not listed_modules | listed_docs, f"README layout names missing files {sorted(listed_modules | listed_docs)}"


def test_readme_layout_names_every_subcommand():
    cli_line = next(line for line in _section(_text(README), "Layout").splitlines() if "cli.py" in line)
    missing = [name for name in _subparsers() if not re.search(rf"\b{name}\b", cli_line)]
    assert not missing, f"the layout's cli.py line lacks subcommands {missing}"


def test_readme_says_where_every_config_section_is_documented():
    readme = _text(README)
    sections = {f.name: f.default for f in dataclasses.fields(ExperimentConfig) if dataclasses.is_dataclass(f.default)}
    for name, default in sections.items():
        source = Path(inspect.getsourcefile(type(default))).resolve().relative_to(ROOT).as_posix()
        assert f"`{source}`" in readme, f"README does not say that {name} fields are in {source}"


def test_readme_lists_every_dataset():
    data = _section(_text(README), "Data")
    assert not [d for d in DATASETS if f"`{d}`" not in data], "README ## Data must list every data.dataset value"


# 3. Flags, config keys and environment variables exist.

def test_nt_robust_command_lines_use_existing_subcommands_and_flags():
    subparsers = _subparsers()
    problems = []
    for path in DOC_FILES:
        for snippet in _snippets(_text(path)):
            argv = _nt_robust_argv(snippet)
            if argv is None or argv[0].startswith("-"):
                continue
            command, *rest = argv
            if command not in subparsers:
                problems.append(f"{path.name}: unknown subcommand in {snippet!r}")
                continue
            known = _options(subparsers[command])
            problems += [f"{path.name}: nt-robust {command} has no {flag} ({snippet!r})"
                         for flag in rest if FLAG.fullmatch(flag.split("=")[0]) and flag.split("=")[0] not in known]
    assert not problems, "\n".join(problems)


def test_every_flag_the_docs_mention_exists():
    subparsers = _subparsers()
    ours = set().union(*(_options(p) for p in subparsers.values())) | _options(build_parser())
    scripts = _script_sources()
    problems = []
    for path in DOC_FILES:
        for snippet in _snippets(_text(path)):
            if _nt_robust_argv(snippet) is not None:
                continue  # checked per subcommand above
            named = [s for s in scripts if s in snippet]
            for flag in set(FLAG.findall(snippet)):
                if named:
                    ok = any(f'"{flag}"' in scripts[s] for s in named)
                else:
                    ok = (flag in ours or flag in EXTERNAL_FLAGS
                          or any(f'"{flag}"' in source for source in scripts.values()))
                if not ok:
                    problems.append(f"{path.name}: {flag} in {snippet!r} exists nowhere")
    assert not problems, "\n".join(problems)


def test_every_config_key_the_docs_mention_resolves():
    sections = {f.name for f in dataclasses.fields(ExperimentConfig) if dataclasses.is_dataclass(f.default)}
    problems = []
    for path in DOC_FILES:
        text = _text(path)
        keys = set(SET_KEY.findall(text))
        for span in _inline_spans(text):
            match = re.fullmatch(r"([a-z_]+(?:\.[a-z_]+)+)(?:\s*=.*)?", span)
            if match and match.group(1).split(".")[0] in sections and match.group(1).split(".")[-1] not in FILE_SUFFIXES:
                keys.add(match.group(1))
        problems += [f"{path.name}: {key}" for key in sorted(keys - {"section.key"}) if not _resolves(key)]
    assert not problems, "config keys that do not exist:\n" + "\n".join(problems)


def _variables_read() -> set[str]:
    """NT_ROBUST_* names the library reads: string literals that are exactly a variable's name
    (``os.environ.get("NT_ROBUST_X")``, ``X_ENV = "NT_ROBUST_X"``), not mentions in messages."""
    names = set()
    for path in (ROOT / "nt_robust").rglob("*.py"):
        for node in ast.walk(ast.parse(_text(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and ENV_VAR.fullmatch(node.value):
                names.add(node.value)
    return names


# Read by a test, not by nt_robust: switches for tests too slow for every run (README "Tests").
TEST_ONLY_VARIABLES = {"NT_ROBUST_SLURM_TEST"}


def test_environment_variables_documented_and_read_are_the_same():
    documented = set().union(*(ENV_VAR.findall(_text(p)) for p in DOC_FILES)) - TEST_ONLY_VARIABLES
    read = _variables_read()
    tests_text = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("*.py") if p.name != "test_docs.py")
    assert all(name in tests_text for name in TEST_ONLY_VARIABLES)
    assert not documented - read, f"documented but never read by nt_robust: {sorted(documented - read)}"
    assert not read - documented, f"read by nt_robust but not documented: {sorted(read - documented)}"
    table = _section(_text(README), "Environment variables")
    assert not read - set(ENV_VAR.findall(table)), "README ## Environment variables must list every variable"


def test_missing_data_hint_names_settings_that_exist():
    from nt_robust.data.sources import not_found_message
    from nt_robust.data.specs import get_spec

    message = not_found_message(get_spec("cifar10"), [(Path("/nowhere"), "does not exist")], "not attempted")
    keys = SET_KEY.findall(message)
    assert keys and all(_resolves(k) for k in keys), message
    train_flags = _options(_subparsers()["train"])
    assert all(flag in train_flags for flag in FLAG.findall(message)), message
    assert set(ENV_VAR.findall(message)) <= _variables_read()


# 4. Install commands keep the pins.

def test_accelerator_extras_keep_the_jax_pin():
    project = tomllib.loads(_text(ROOT / "pyproject.toml"))["project"]
    pin = next(d for d in project["dependencies"] if re.match(r"jax[<>=!~ ]", d))[len("jax"):]
    extras = project["optional-dependencies"]
    for extra in ("cuda12", "cuda13", "tpu"):
        assert extras[extra] == [f"jax[{extra}]{pin}"], f"extra {extra} must be jax[{extra}]{pin}"
    gpu = _section(_text(README), "GPU and TPU")
    assert '.venv/bin/pip install -e ".[cuda12]"' in gpu
    for path in DOC_FILES:  # no copy-paste install of an accelerator JAX without the range
        for line in _code_lines(_text(path)):
            if "pip install" in line and "jax[" in line:
                assert "<" in line, f"{path.name}: {line!r} ignores the jax pin"


def test_suite_size_and_time_are_stated_only_in_the_readme():
    for path in DOCS:
        for line in _text(path).splitlines():
            assert not re.search(r"\b\d+ tests\b|\b\d+ passed\b|(full|test) suite[^.]*\d+(\.\d+)? min", line), (
                f"{path.name}: state the suite's size/time only in the README's Tests section: {line!r}")
    assert "only place that states the suite's size and time" in _section(_text(README), "Tests")


# 5. The README's nt-robust command lines run.

TINY = ["data.dataset=synthetic", "data.train_subset=none", "data.val_size=64", "data.crop_padding=1",
        "model.arch=mlp", "model.width=16", "model.depth=1", "train.batch_size=64", "train.epochs=1",
        "train_attack.num_steps=2", "eval.attack.num_steps=3", "eval.val_examples=64",
        "eval.test_examples=64", "eval.batch_size=64", "train.progress=false"]
EVAL_EXAMPLES = "16"
PLACEHOLDERS = {"...": "experiments/quick_fmnist.toml", "…": "experiments/quick_fmnist.toml",
                "$TASK": "0", "$RANK": "0", "RUN_DIR": "runs/readme_run"}
_DRIVER = """
import json, sys, traceback
from nt_robust.cli import main
codes = []
for argv in json.loads(sys.argv[1]):
    print("$ nt-robust " + " ".join(argv), flush=True)
    try:
        codes.append(main(argv))
    except SystemExit as exit_:
        codes.append(exit_.code)
    except Exception:
        traceback.print_exc()
        codes.append("exception")
print("CODES " + json.dumps(codes), flush=True)
"""


def _readme_commands() -> list[list[str]]:
    commands = []
    for line in _code_lines(_text(README)):
        argv = _nt_robust_argv(line)
        if argv is not None and not argv[0].startswith("-"):
            commands.append([PLACEHOLDERS.get(a, a) for a in argv])
    return commands


def _plan(commands: list[list[str]]) -> tuple[list[str] | None, list[list[str]], list[list[str]]]:
    """(the one real training run, commands that start no backend, the rest): README order
    within each group; every other train is a --dry-run, every study a --list."""
    subparsers = _subparsers()
    real_train, light, heavy = None, [], []
    evaluated = False
    for argv in commands:
        command = argv[0]
        options = _options(subparsers[command]) if command in subparsers else set()
        if command == "train":
            if real_train is None and "--dry-run" not in argv and not {"--distributed", "--coordinator"} & set(argv):
                real_train = argv + [x for o in TINY for x in ("--set", o)]
            else:
                light.append(argv if "--dry-run" in argv else argv + ["--dry-run"])
        elif command == "study":
            light.append(argv + ["--list"])
        elif command == "eval":
            if not evaluated:  # only the first eval runs (the others are parsed and validated)
                heavy.append(argv if "--examples" in argv else argv + ["--examples", EVAL_EXAMPLES])
            evaluated = True
        elif "--dry-run" in options:
            light.append(argv if "--dry-run" in argv else argv + ["--dry-run"])
        elif command != "info":
            heavy.append(argv)  # e.g. commands that read the trained run
    heavy += [argv for argv in commands if argv[0] == "info"]  # last: info starts the backend
    # --cpu-devices must act before any command starts JAX's backend: those commands go first.
    light.sort(key=lambda a: "--cpu-devices" not in a)
    return real_train, light, heavy


def _command_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NT_ROBUST_") or k == "NT_ROBUST_COMPILATION_CACHE"}
    env.update(NT_ROBUST_OFFLINE="1", XDG_CACHE_HOME=str(tmp_path / "cache"), JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def test_readme_commands_parse():
    parser = build_parser()
    commands = _readme_commands()
    assert {"train", "eval", "study", "info"} <= {c[0] for c in commands}
    for argv in commands:
        parser.parse_args(argv)  # SystemExit (a failure) on an unknown flag or a bad choice


def test_readme_eval_presets_and_protocols_exist():
    from nt_robust.attacks.protocols import PROTOCOLS
    from nt_robust.evaluate import ATTACKS

    for argv in _readme_commands():
        args = build_parser().parse_args(argv)
        if argv[0] == "eval":
            assert args.protocol is None or args.protocol in PROTOCOLS, argv
            assert args.attack is None or args.attack in ATTACKS or args.attack == "fgsm", argv


def test_readme_commands_run(tmp_path):
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    env = _command_env(tmp_path)
    real_train, light, heavy = _plan(_readme_commands())
    assert real_train is not None, "the README shows no training command to run"
    base = [sys.executable, "-m", "nt_robust.cli"]
    done = subprocess.run(base + real_train, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"nt-robust {shlex.join(real_train)}\n{done.stdout}\n{done.stderr}"
    trained = tmp_path / "runs" / "readme_run"
    run_dirs = sorted(p for p in (tmp_path / "runs").iterdir() if (p / "summary.json").is_file())
    assert run_dirs, done.stdout + done.stderr
    if not trained.exists():
        trained.symlink_to(run_dirs[0])
    # Any other runs/<name> a README command names is the same tiny run.
    for argv in light + heavy:
        for arg in argv:
            if re.fullmatch(r"runs/[\w.-]+", arg) and not (tmp_path / arg).exists():
                (tmp_path / arg).symlink_to(run_dirs[0])
    batch = light + heavy
    done = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(batch)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    codes_line = [line for line in done.stdout.splitlines() if line.startswith("CODES ")]
    assert done.returncode == 0 and codes_line, output
    codes = json.loads(codes_line[-1][len("CODES "):])
    failed = [shlex.join(argv) for argv, code in zip(batch, codes) if code not in (0, None)]
    assert not failed, "README commands that failed:\n" + "\n".join(failed) + "\n" + output[-4000:]
