"""metrics.jsonl across runs in one workdir: resumed runs continue it, fresh runs keep
the earlier record beside it."""

from __future__ import annotations

import json

from lasad_jax.training.writers import JsonlWriter


def _steps(path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def _run(path, resume_step: int | None, steps: range) -> None:
    writer = JsonlWriter(str(path), resume_step)
    for step in steps:
        writer.write_scalars(step, {"loss": float(step)})
    writer.close()


def test_a_fresh_run_renames_an_earlier_runs_metrics_instead_of_erasing_them(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _run(path, 0, range(1, 6))
    _run(path, 3, range(4, 8))  # resumed from the checkpoint at step 3
    assert _steps(path) == [1, 2, 3, 4, 5, 6, 7]
    _run(path, 0, range(1, 3))  # checkpoints moved away: a new run
    assert _steps(path) == [1, 2]
    assert _steps(tmp_path / "metrics.jsonl.1") == [1, 2, 3, 4, 5, 6, 7]
    _run(path, 0, range(1, 2))
    assert _steps(tmp_path / "metrics.jsonl.2") == [1, 2]
    assert _steps(tmp_path / "metrics.jsonl.1") == [1, 2, 3, 4, 5, 6, 7]
    assert _steps(path) == [1]


def test_an_empty_file_is_continued_not_renamed(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("")
    _run(path, 0, range(1, 3))
    assert _steps(path) == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
