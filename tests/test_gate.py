"""The evaluation gate: promote only on a real gain, never on a thin holdout or with forgetting."""

from __future__ import annotations

import math

from cloud_trainer.gate import judge


def test_agreement_must_rise_by_the_margin() -> None:
    ok = judge("agreement", current=0.30, candidate=0.45, higher_is_better=True, margin=0.05,
               n_holdout=50, min_holdout=10)
    assert ok.promote and ok.metrics["agreement_gain"] == 0.45 - 0.30
    thin = judge("agreement", current=0.30, candidate=0.33, higher_is_better=True, margin=0.05,
                 n_holdout=50, min_holdout=10)
    assert not thin.promote and "margin" in thin.reason
    assert thin.metrics == {"agreement_current": 0.30, "agreement_candidate": 0.33,
                            "agreement_gain": thin.metrics["agreement_gain"], "holdout": 50.0}


def test_wer_must_fall() -> None:
    better = judge("wer", current=0.9, candidate=0.2, higher_is_better=False, margin=0.05,
                   n_holdout=5, min_holdout=2)
    worse = judge("wer", current=0.2, candidate=0.3, higher_is_better=False, margin=0.0,
                  n_holdout=5, min_holdout=2)
    assert better.promote and math.isclose(better.metrics["wer_gain"], 0.7)
    assert not worse.promote


def test_small_or_unmeasurable_holdout_is_refused() -> None:
    assert not judge("wer", current=0.9, candidate=0.1, higher_is_better=False, margin=0.0,
                     n_holdout=1, min_holdout=2).promote
    assert not judge("agreement", current=float("nan"), candidate=0.9, higher_is_better=True,
                     margin=0.0, n_holdout=20, min_holdout=2).promote


def test_forgetting_the_original_domain_is_refused() -> None:
    forgot = judge("agreement", current=0.2, candidate=0.6, higher_is_better=True, margin=0.05,
                   n_holdout=50, min_holdout=10, guard=("replay_agreement", 0.8, 0.6, 0.05))
    assert not forgot.promote and "replay_agreement" in forgot.reason
    assert forgot.metrics["replay_agreement_candidate"] == 0.6
    kept = judge("agreement", current=0.2, candidate=0.6, higher_is_better=True, margin=0.05,
                 n_holdout=50, min_holdout=10, guard=("replay_agreement", 0.8, 0.78, 0.05))
    assert kept.promote
