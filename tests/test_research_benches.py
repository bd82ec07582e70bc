"""The research benches' arithmetic: the scaling law fit recovers a known law, and the dense-vs-untied comparison
finds the step at which a curve reaches a target."""

from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
from scaling_ladder import fit_law, rung_config  # noqa: E402
from untied_vs_dense import first_step_at  # noqa: E402


def test_the_law_fit_recovers_known_exponents():
    law = dict(E=0.5, A=40.0, alpha=0.35, B=300.0, beta=0.3)
    points = [
        (n, d, law["E"] + law["A"] * n ** -law["alpha"] + law["B"] * d ** -law["beta"])
        for n in (5e4, 2e5, 6e5, 2e6, 5e6)
        for d in (1e5, 3e5, 1e6, 3e6)
    ]
    fit = fit_law(points)
    assert fit["rms_relative_error"] < 1e-3
    assert math.isclose(fit["alpha"], 0.35, abs_tol=0.03) and math.isclose(fit["beta"], 0.3, abs_tol=0.03)


def test_rungs_and_the_step_at_a_target():
    assert rung_config("256x6") == {"dim": 256, "n_layers": 6, "n_heads": 4, "n_kv_heads": 4, "ffn_dim": 704}
    curve = [(0, 3.0), (100, 2.0), (200, 1.0)]
    assert first_step_at(curve, 1.5) == 150.0
    assert first_step_at(curve, 0.5) is None and first_step_at(curve, 4.0) == 0.0
