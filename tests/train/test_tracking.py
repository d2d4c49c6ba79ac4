"""Tracking (issue 38 item 5): the TensorBoard event files hold exactly metrics.jsonl's rows and
the config, read back with TensorBoard's own reader (not tensorboardX, which wrote them), also
after an interrupted run resumed over a tracking directory that disagreed with its checkpoint;
a tracking option whose package is missing stops the run with the install command."""

from __future__ import annotations

import json
import math

import pytest

from nt_robust import cli
from nt_robust.config import load_config
from nt_robust.train import ExperimentConfig, train
from nt_robust.train.config import LoopConfig
from nt_robust.train.loop import Trainer
from nt_robust.train import tracking

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
pytest.importorskip("tensorboardX")

TRACKED = ["train.epochs=3", "train.tensorboard=true"]


def read_events(log_dir):
    """{tag: [(step, value), ...]} and the config text, every event of every file in ``log_dir``
    (purge_orphaned_data off: a point written twice would be read twice)."""
    reader = event_accumulator.EventAccumulator(
        str(log_dir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0},
        purge_orphaned_data=False)
    reader.Reload()
    scalars = {tag: [(e.step, e.value) for e in reader.Scalars(tag)] for tag in reader.Tags()["scalars"]}
    texts = [e.tensor_proto.string_val[0].decode() for e in reader.Tensors("config/text_summary")]
    return scalars, texts


def expected_points(rows):
    points = {}
    for row in rows:
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                points.setdefault(key, []).append((row["step"], value))
    return points


def assert_events_match(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((run_dir / "config.json").read_text())
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    scalars, texts = read_events(run_dir / "tensorboard")
    expected = expected_points(rows)
    assert set(scalars) == set(expected)
    for tag, points in expected.items():
        got = scalars[tag]
        assert [s for s, _ in got] == [s for s, _ in points], tag
        for (_, value), (_, want) in zip(got, points):  # stored as float32
            assert math.isclose(value, want, rel_tol=1e-6, abs_tol=1e-30) or (math.isnan(value) and math.isnan(want))
    assert len(texts) == 1 and json.loads("\n".join(line[4:] for line in texts[0].splitlines())) == config
    return rows


def test_tensorboard_events_equal_metrics_across_a_resume(tmp_path, tiny_run_overrides):
    from tensorboardX import SummaryWriter

    config = load_config(ExperimentConfig, None, [*tiny_run_overrides, *TRACKED])
    run_dir = tmp_path / "tracked"
    trainer = Trainer(config, run_dir)
    steps_per_epoch = trainer.steps_per_epoch
    trainer.fit(stop_after_steps=steps_per_epoch + 1)  # epoch 1 done, stopped inside epoch 2
    first = assert_events_match(run_dir)
    assert [r["epoch"] for r in first] == [1]
    # What a crash can leave: a stale file with a point past the checkpoint (an epoch that will
    # be redone) and the checkpoint's row missing from TensorBoard.
    for path in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        path.unlink()
    stale = SummaryWriter(str(run_dir / "tensorboard"), filename_suffix=".stale")
    stale.add_scalar("train_loss", 123.0, global_step=2 * steps_per_epoch)
    stale.close()
    train(config, run_dir)
    rows = assert_events_match(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[0] == first[0]


def test_a_missing_tracking_package_is_named_with_its_install_command(monkeypatch):
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorboardX", "wandb") else real(name, *a))
    tracking.check_available(LoopConfig())  # both off: nothing needed
    with pytest.raises(tracking.TrackingUnavailableError, match=r"pip install 'tensorboardX>=2.6,<3'.*"
                                                                r"train.tensorboard = false"):
        tracking.check_available(LoopConfig(tensorboard=True))
    with pytest.raises(tracking.TrackingUnavailableError, match=r"pip install 'wandb>=0.17,<1'"):
        tracking.check_available(LoopConfig(wandb=True))


def test_the_cli_stops_before_training_when_wandb_is_missing(tmp_path, capsys, monkeypatch, tiny_run_overrides):
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    args = ["train", "--run-dir", str(tmp_path / "run")]
    for override in [*tiny_run_overrides, "train.wandb=true"]:
        args += ["--set", override]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "TrackingUnavailableError: train.wandb = true writes with the wandb package" in err
    assert "Traceback" not in err and not (tmp_path / "run" / "checkpoints").exists()


def read_wandb_records(path):
    """The Records of an offline run's .wandb file: a ":W&B" header, then LevelDB's log format
    (32 KiB blocks of records: crc32c, length, type FULL/FIRST/MIDDLE/LAST), parsed with W&B's
    proto class."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block, records, pending, position = path.read_bytes(), 32768, [], b"", 7
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position:position + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (kind == 0 and length == 0):  # block padding
            position += left
            continue
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_run_holds_the_rows(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    rows = [{"epoch": 1, "step": 4, "train_loss": 1.5, "val_robust_accuracy": None},
            {"epoch": 2, "step": 8, "train_loss": 1.25, "val_robust_accuracy": 0.5}]
    config = {"name": "run", "train": {"epochs": 2}}
    trackers = tracking.open_trackers(LoopConfig(wandb=True), tmp_path / "run", config, rows[:1])
    trackers.write(rows[1])
    trackers.close()
    import wandb
    wandb.teardown()  # W&B's service process writes the file; its end flushes it, as a process's end does
    [path] = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    records = read_wandb_records(path)
    logged = [(r.history.step.num, {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item
                                    if not (i.key or i.nested_key[0]).startswith("_")})
              for r in records if r.WhichOneof("record_type") == "history"]
    assert logged == [(row["step"], {k: v for k, v in row.items() if v is not None}) for row in rows]
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert {i.key: json.loads(i.value_json) for i in run.config.update if i.key != "_wandb"} == config


def test_tracking_can_be_switched_on_for_a_finished_run(tiny_run, tiny_run_overrides, tmp_path):
    """train.tensorboard may change between attempts (RESUMABLE_CHANGES): switched on for a run
    trained without it, the next `train` writes the checkpoint's rows without training again."""
    import shutil

    run_dir = tmp_path / "tiny"
    shutil.copytree(tiny_run, run_dir)
    before = (run_dir / "metrics.jsonl").read_text()
    summary = train(load_config(ExperimentConfig, None, [*tiny_run_overrides, "train.tensorboard=true"]), run_dir)
    assert summary["final"] == json.loads(before.splitlines()[-1])
    assert (run_dir / "metrics.jsonl").read_text() == before
    assert_events_match(run_dir)
