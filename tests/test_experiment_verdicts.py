"""Verdicts of converted experiments on hand-made inputs (no training): each scorer passes
what its claim says and fails what it rules out; and each note link is the note's own."""

from __future__ import annotations

import torch

from kexue.experiments import EXPERIMENTS
from kexue.experiments import direct_metric as dm


def test_constrained_text_links_the_keywords_to_sentence_note():
    # 【搜出来的文本】⋅（四）通过增、删、改来用词造句 (2021-02-25) is archive 8194; 8111 is not
    # in that series (〈二〉 is 8084, 〈三〉 8119).
    assert EXPERIMENTS["constrained_text"].note == "https://kexue.fm/archives/8194"


def _scores(pg: float, zo: float) -> dict[str, dict[str, list[float]]]:
    row = {"cross-entropy": [0.90, 0.90], "cross-entropy + tuned threshold": [0.90, 0.90],
           "policy gradient on F1": [pg, pg], "zeroth-order on F1": [zo, zo]}
    return {"task": row}


def test_direct_metric_verdict_is_a_two_sided_gap_of_005():
    torch.set_num_threads(1)
    config = dm.EXPERIMENT.quick
    assert dm._result(config, _scores(0.86, 0.94)).holds  # within 0.05 either way
    assert not dm._result(config, _scores(0.84, 0.90)).holds  # 0.06 below
    assert not dm._result(config, _scores(0.90, 0.96)).holds  # 0.06 above: beats, not matches
    result = dm._result(config, _scores(0.84, 0.90))
    assert abs(result.metrics["largest |direct − CE| gap"] - 0.06) < 1e-12
