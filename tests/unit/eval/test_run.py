"""eval/run.py: what ``--merge`` keeps of an earlier run."""

from __future__ import annotations

from eval.run import merged


def test_merge_replaces_re_run_parts_and_keeps_rows_only_for_an_only_run() -> None:
    old = {"probes": {"old set": 0.8, "kept": 0.5}, "truthfulqa": {"none": 1, "truth +1": 2}, "date": "d0"}
    new = {"probes": {"new set": 0.6, "kept": 0.7}}
    assert merged(old, new, keep_rows=False) == {"probes": {"new set": 0.6, "kept": 0.7},
                                                 "truthfulqa": {"none": 1, "truth +1": 2}, "date": "d0"}
    only = merged(old, {"truthfulqa": {"truth +1": 3}}, keep_rows=True)
    assert only["truthfulqa"] == {"none": 1, "truth +1": 3} and only["probes"] == old["probes"]
