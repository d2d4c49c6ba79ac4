"""Progress output: a bar on a real terminal (a pty), plain timed lines in a log file."""

from __future__ import annotations

import os

from nt_robust.train.progress import LineProgress, progress_bar


def test_a_terminal_gets_a_bar_and_a_file_gets_lines(tmp_path):
    leader, follower = os.openpty()
    with os.fdopen(follower, "w") as tty, open(tmp_path / "job.log", "w") as log_file:
        assert tty.isatty() and not log_file.isatty()
        bar = progress_bar(10, 0, "epoch 1/2", enabled=True, stream=tty)
        assert not isinstance(bar, LineProgress) and hasattr(bar, "refresh") and not bar.disable  # tqdm's
        bar.close()
        assert isinstance(progress_bar(10, 0, "epoch 1/2", enabled=True, stream=log_file), LineProgress)
        assert progress_bar(10, 0, "epoch 1/2", enabled=False, stream=log_file).disable
    os.close(leader)


def test_lines_come_once_per_interval_with_the_rate_and_the_metrics():
    now = [0.0]
    lines: list[str] = []
    bar = LineProgress(total=100, initial=10, desc="epoch 3/5", interval=60.0, clock=lambda: now[0], emit=lines.append)
    for _ in range(30):       # 30 steps in 59 s: nothing yet
        now[0] += 59 / 30
        bar.update(1)
    assert lines == []
    bar.set_postfix(loss="0.500", acc="0.800", refresh=False)
    now[0] = 61.0
    bar.update(1)             # 31 steps in 61 s
    assert lines == ["epoch 3/5: step 41/100 (0.51 steps/s, loss 0.500, acc 0.800)"]
    now[0] = 100.0
    bar.update(1)             # 39 s after the last line: nothing
    assert len(lines) == 1
