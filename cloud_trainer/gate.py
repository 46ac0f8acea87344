"""The evaluation gate: a candidate is promoted only if it beats the serving version on
the holdout by a set margin (and, where given, does not forget the original domain)."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["GateResult", "judge"]


@dataclass(frozen=True, slots=True)
class GateResult:
    promote: bool
    reason: str
    metrics: dict[str, float]


def judge(metric: str, *, current: float, candidate: float, higher_is_better: bool, margin: float,
          n_holdout: int, min_holdout: int, guard: tuple[str, float, float, float] | None = None) -> GateResult:
    """Decide on one candidate.

    ``metric`` names the figure (``agreement``, ``wer``); ``guard`` is an optional
    (name, current, candidate, max_drop) check on a higher-is-better figure, e.g. agreement on the
    original-domain replay holdout. Every figure is returned for the record.
    """
    gain = (candidate - current) if higher_is_better else (current - candidate)
    metrics = {f"{metric}_current": current, f"{metric}_candidate": candidate, f"{metric}_gain": gain,
               "holdout": float(n_holdout)}
    if n_holdout < min_holdout:
        return GateResult(False, f"holdout of {n_holdout} < {min_holdout}", metrics)
    if math.isnan(current) or math.isnan(candidate):
        return GateResult(False, f"{metric} could not be measured", metrics)
    if guard is not None:
        name, g_current, g_candidate, max_drop = guard
        metrics.update({f"{name}_current": g_current, f"{name}_candidate": g_candidate})
        if not math.isnan(g_current) and g_current - g_candidate > max_drop:
            return GateResult(False, f"{name} fell {g_current - g_candidate:.3f} > {max_drop}", metrics)
    if gain < margin:
        return GateResult(False, f"{metric} gain {gain:+.3f} < margin {margin}", metrics)
    return GateResult(True, f"{metric} gain {gain:+.3f} >= margin {margin}", metrics)
