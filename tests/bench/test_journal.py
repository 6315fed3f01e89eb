"""The benchmark's row journal: finished jobs survive a stopped run and are not run twice."""

from __future__ import annotations

import pytest
import torch

from benchmarks.grid import EvalSets, MethodPoint, run_grid
from benchmarks.journal import RowJournal, job_key
from vitedit_ops.edit_cases import GroupInputs, make_cases
from vitedit_ops.errors import InvalidInputError

from ..engine.conftest import tiny_vit

HEADER = {"reference": "abc", "seed": 0, "cases": [[0, [1], "select"]]}
POINT = MethodPoint("w", "window_ft", "-", 1e-3, (("max_steps", 3),))


def test_resume_reads_finished_jobs_and_ignores_a_job_cut_off_mid_write(tmp_path):
    path = tmp_path / "rows.jsonl"
    journal = RowJournal(path, HEADER, resume=False)
    journal.record(job_key(POINT, 1), [{"gr": 0.5}])
    journal.close()
    with open(path, "a") as handle:
        handle.write('{"job": "cut')  # the run was killed while writing
    resumed = RowJournal(path, HEADER, resume=True)
    assert resumed.completed == {job_key(POINT, 1): [{"gr": 0.5}]}
    resumed.close()


def test_resume_under_other_settings_is_refused_and_names_what_differs(tmp_path):
    path = tmp_path / "rows.jsonl"
    RowJournal(path, HEADER, resume=False).close()
    with pytest.raises(InvalidInputError, match="seed"):
        RowJournal(path, {**HEADER, "seed": 1}, resume=True)


def test_a_fresh_run_starts_a_new_journal(tmp_path):
    path = tmp_path / "rows.jsonl"
    journal = RowJournal(path, HEADER, resume=False)
    journal.record(job_key(POINT, 1), [{"gr": 0.5}])
    journal.close()
    assert RowJournal(path, HEADER, resume=False).completed == {}
    assert RowJournal(path, HEADER, resume=True).completed == {}


def test_job_keys_tell_options_and_k_apart():
    other = MethodPoint("w", "window_ft", "-", 1e-3, (("max_steps", 4),))
    assert len({job_key(POINT, 1), job_key(POINT, 2), job_key(other, 1)}) == 3


def _tiny_args(point):
    return {"window": (1, 2)}


def test_grid_skips_completed_jobs_and_reports_the_others():
    vit = tiny_vit()
    groups = [GroupInputs("noise", 1, 0, torch.randn(6, 3, 16, 16))]
    locality = torch.randn(8, 3, 16, 16)
    evals = EvalSets(locality, vit(locality).argmax(-1), torch.arange(2), groups)
    cases = make_cases(groups, 2, 2)
    points = [POINT, MethodPoint("w", "window_ft", "-", 1e-2, (("max_steps", 3),))]
    first = run_grid(vit, points, cases, [1], evals, _tiny_args)
    stored = {job_key(POINT, 1): [r for r in first if r["lr"] == 1e-3]}
    ran = []
    again = run_grid(vit, points, cases, [1], evals, _tiny_args,
                     on_job=lambda p, k, rows: ran.append((p.lr, k, len(rows))),
                     completed=lambda p, k: stored.get(job_key(p, k)))
    assert ran == [(1e-2, 1, len(cases))]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa
    assert strip(again) == strip(first)
