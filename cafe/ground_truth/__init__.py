"""Ground truth of the demo world: ERF maps scored against its planted causes (`cafe ground-truth`,
`cafe.ground_truth.command`), counterfactual scenes (`interventions`) and the compositional report. The params
(`config`) load without pandas or matplotlib; the names below load their module when first asked for."""

from __future__ import annotations

from cafe.lazy import lazy_names

__getattr__, __dir__ = lazy_names(
    __name__, dict.fromkeys(["register", "run_ground_truth", "score_layer"], "cafe.ground_truth.command")
)
