"""`train --dry-run --topology TYPE` (issue 39 item 4): the per-host batch, the mesh, the precision
and the memory per chip of a run on a TPU slice, printed on a machine without one; bad topologies
get a message naming the fix. The README's TPU table is the code's."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import pytest

from nt_robust import accelerators, cli
from nt_robust.config import ConfigError, load_config
from nt_robust.topology import Topology, plan_topology, tpu_defaults_markdown
from nt_robust.train import ExperimentConfig
from nt_robust.train.config import estimate_training_memory
from nt_robust.train.sharding import process_rows

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name, device, hosts, chips", [
    ("v4-8", "tpu-v4", 1, 4), ("v4-32", "tpu-v4", 4, 4), ("v5p-8", "tpu-v5p", 1, 4), ("v5p-128", "tpu-v5p", 16, 4),
    ("v5litepod-4", "tpu-v5e", 1, 4), ("v5e-8", "tpu-v5e", 1, 8), ("v5litepod-16", "tpu-v5e", 4, 4),
    ("tpu-v5litepod-256", "tpu-v5e", 64, 4)])
def test_accelerator_types(name, device, hosts, chips):
    topology = Topology.parse(name)
    assert (topology.device, topology.hosts, topology.chips_per_host) == (device, hosts, chips)


@pytest.mark.parametrize("name, message", [
    ("v6e-16", "not an accelerator type known here (v4-N, v5litepod-N, v5e-N, v5p-N"),
    ("a100-8", "not an accelerator type known here"), ("v4", "not an accelerator type known here"),
    ("v4-12", "4 chips per host, so 6 chips do not make whole hosts"),
    ("v5p-7", "N must be a multiple of 2"), ("v5litepod-18", "4 chips per host, so 18 chips do not make whole hosts")])
def test_unknown_or_impossible_types_are_named(name, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Topology.parse(name)


def test_the_plan_is_what_each_host_of_the_slice_would_feed(monkeypatch):
    config = load_config(ExperimentConfig, None, ["train.batch_size=256", "model.width=2", "model.depth=10"])
    plan = plan_topology(config, Topology.parse("v4-32"))
    assert (plan["hosts"], plan["chips"], plan["per_host_batch"], plan["per_chip_batch"]) == (4, 16, 64, 16)
    assert plan["mesh"] == {"axes": ["data"], "shape": [16]}
    # the rows the training loop's process_rows gives process h of 4: a second implementation
    monkeypatch.setattr(jax, "process_count", lambda: 4)
    for host, (start, stop) in enumerate(plan["host_rows"]):
        monkeypatch.setattr(jax, "process_index", lambda host=host: host)
        assert process_rows(256) == slice(start, stop)
    # precision and peak: the defaults on a TPU run float32 matmuls as one bf16 pass: the bf16 peak
    assert (plan["compute_dtype"], plan["peak_class"]) == ("float32", "bf16")
    assert plan["float32_matmul_runs_as"] == "bfloat16 (1 pass)"
    assert plan["peak_tflops_per_chip"] == accelerators.find_device("tpu-v4").bf16 == 275.0
    estimate = estimate_training_memory(config)
    assert plan["memory_per_chip_bytes"] == estimate["weights_bytes"] + estimate["activation_bytes"] // 16
    assert plan["chip_memory_bytes"] == 32 * 2**30


def test_the_cli_dry_run_prints_the_layout(capsys):
    assert cli.main(["train", "--dry-run", "--topology", "v5litepod-16", "--set", "model.dtype=bfloat16"]) == 0
    err = capsys.readouterr().err
    assert "topology v5litepod-16: 4 host(s) x 4 chip(s) = 16 devices (tpu-v5e)" in err
    assert "train.batch_size 128: 32 rows per host, 8 per chip (host 0: rows 0-31, host 1: rows 32-63" in err
    assert "compute dtype bfloat16" in err and "197.0 TFLOP/s (bf16)" in err and "of 16.00 GiB per chip" in err
    assert cli.main(["train", "--dry-run", "--hosts", "2", "--chips-per-host", "8", "--device", "h100"]) == 0
    err = capsys.readouterr().err
    assert "2 host(s) x 8 chip(s) = 16 devices (h100)" in err and "(tf32)" in err


@pytest.mark.parametrize("argv, message", [
    (["--topology", "v4-32", "--set", "train.batch_size=100"],
     "train.batch_size = 100 does not divide over the 16 chips of v4-32 (4 host(s) x 4 chip(s)): use a multiple of "
     "16, e.g. 96 or 112"),
    (["--topology", "v4-32", "--set", "train.batch_size=130"], "train.batch_size = 130 does not divide over the 4 hosts"),
    (["--hosts", "3", "--chips-per-host", "4"], "train.batch_size = 128 does not divide over the 3 hosts"),
    (["--topology", "v4-32", "--set", "eval.batch_size=200"], "eval.batch_size = 200 does not divide over the 16 chips"),
    (["--topology", "v6e-8"], "'v6e-8' is not an accelerator type known here"),
    (["--hosts", "2"], "--hosts and --chips-per-host must both be given"),
    (["--hosts", "2", "--chips-per-host", "4", "--device", "tpu-v9"], "--device 'tpu-v9' is not a chip known here"),
    (["--topology", "v4-8", "--hosts", "1"], "give either --topology TYPE or --hosts"),
])
def test_bad_topologies_get_a_clear_message(argv, message, capsys):
    assert cli.main(["train", "--dry-run", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_topology_needs_dry_run(capsys):
    assert cli.main(["train", "--topology", "v4-8"]) == 2
    assert "add --dry-run" in capsys.readouterr().err


def test_the_readme_tpu_table_is_the_codes():
    assert tpu_defaults_markdown() in (ROOT / "README.md").read_text()
