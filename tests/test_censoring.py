"""extractability.csv's `censored` flag (SPEC §8): written by the probing code, read by the report."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from rlbias_jax.analysis.tables import ReportError, censoring, mark_censored
from rlbias_jax.probing import extractability


def mdl_rows(accuracy_s: float, accuracy_t: float, layer: int = -1, mdl_s: float = 300.0, mdl_t: float = 600.0) -> list[dict]:
    """mdl.csv rows of two probe seeds whose mean accuracies are the given ones."""
    rows = []
    for seed, offset in ((0, -0.01), (1, 0.01)):
        for probe, accuracy, mdl in (("s", accuracy_s, mdl_s), ("t", accuracy_t, mdl_t)):
            rows.append({"layer": layer, "probe": probe, "probe_seed": seed, "mdl_bits": mdl + 10 * offset,
                         "uniform_bits": 2000.0, "compression": 2000.0 / mdl, "accuracy": accuracy + offset})
    return rows


BASE = {"task_id": 2, "task_name": "first-last", "probe_mode": "policy"}


def test_summary_row_is_censored_when_a_probe_is_below_min_accuracy():
    row = extractability._summary_row(BASE, -1, mdl_rows(0.97, 0.61), min_accuracy=0.9)
    assert row["censored"] is True and row["censored_reason"] == "t-probe accuracy 0.61 < 0.90"
    assert list(row) == extractability.EXTRACTABILITY_COLUMNS
    both = extractability._summary_row(BASE, -1, mdl_rows(0.55, 0.61), min_accuracy=0.9)
    assert both["censored_reason"] == "s-probe accuracy 0.55 < 0.90; t-probe accuracy 0.61 < 0.90"
    clean = extractability._summary_row(BASE, -1, mdl_rows(0.97, 0.9), min_accuracy=0.9)  # at the bar: not censored
    assert clean["censored"] is False and clean["censored_reason"] == ""
    assert extractability._summary_row(BASE, -1, mdl_rows(0.97, 0.61), min_accuracy=0.5)["censored"] is False


def test_best_layer_row_is_censored_by_the_accuracies_of_the_chosen_layers():
    per_layer = [
        extractability._summary_row({**BASE, "probe_mode": "frozen"}, 0, mdl_rows(0.99, 0.55, 0, mdl_s=200, mdl_t=1900), 0.9),
        extractability._summary_row({**BASE, "probe_mode": "frozen"}, 1, mdl_rows(0.7, 0.95, 1, mdl_s=900, mdl_t=500), 0.9),
    ]
    best = extractability._best_layer_row({**BASE, "probe_mode": "frozen"}, per_layer, 0.9)
    # s is best at layer 0 (accuracy 0.99), t at layer 1 (0.95): both learned there
    assert (best["accuracy_s"], best["accuracy_t"]) == (pytest.approx(0.99), pytest.approx(0.95))
    assert best["censored"] is False and list(best) == extractability.EXTRACTABILITY_COLUMNS
    assert per_layer[0]["censored"] and per_layer[1]["censored"]


def test_probing_code_and_report_apply_the_same_rule():
    for accuracy_s, accuracy_t, minimum in ((0.97, 0.61, 0.9), (0.85, 0.95, 0.9), (0.9, 0.9, 0.9), (0.2, 0.3, 0.25)):
        row = extractability._summary_row(BASE, -1, mdl_rows(accuracy_s, accuracy_t), minimum)
        assert row["censored_reason"] == censoring(row["accuracy_s"], row["accuracy_t"], minimum)


def test_report_reads_or_derives_the_flag(tmp_path):
    table = pd.DataFrame({"accuracy_s": [0.95, 0.95], "accuracy_t": [0.61, 0.93]})
    derived, note = mark_censored(table, 0.9, Path("extractability.csv"))
    assert derived["censored"].tolist() == [True, False] and derived["censored_reason"].tolist() == ["t-probe accuracy 0.61 < 0.90", ""]
    assert "computed from the probe accuracies (probe.min_accuracy = 0.9)" in note
    written = table.assign(censored=["True", "False"], censored_reason=["t-probe accuracy 0.61 < 0.90", float("nan")])
    read, note = mark_censored(written, 0.5, Path("extractability.csv"))  # the file's flag wins over the config
    assert read["censored"].tolist() == [True, False] and read["censored_reason"].tolist() == ["t-probe accuracy 0.61 < 0.90", ""] and note == ""
    with pytest.raises(ReportError, match=r"extractability\.csv: corrupt \(non-boolean value 'maybe' in column 'censored'\)"):
        mark_censored(table.assign(censored=["maybe", "False"]), 0.9, Path("extractability.csv"))
