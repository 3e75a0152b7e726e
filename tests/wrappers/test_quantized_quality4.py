"""4-bit Adam state on the digits MLP: the 5% band, and why the second moment has no zero
point (`benchmarks.quantized_quality` runs the full comparison, least squares and the LM too).
"""

from __future__ import annotations

import functools

import pytest
from support.benchmarks import load

import dlopt

qq = load("quantized_quality")


@functools.cache
def digits() -> dict[str, float]:
    names = ("f32", "q4", "paper", "v_zero")
    return qq.quality("digits", names)


@pytest.mark.slow  # 4 x 600 full-batch steps: about 20 s of CPU
def test_4bit_adam_ends_within_5_percent_of_float32_on_digits():
    losses = digits()
    if "q4" not in losses:
        pytest.skip("dlopt.quantized(bits=4) is not in this dlopt")
    assert 0.95 * losses["f32"] <= losses["q4"] <= 1.05 * losses["f32"], losses


@pytest.mark.slow
def test_the_papers_4bit_design_trains_and_a_zero_point_breaks_it():
    losses = digits()
    assert losses["paper"] <= 1.05 * losses["f32"], losses
    # v rounded to 0 where m is not: m / sqrt(v) explodes (NaN counts as broken)
    assert not losses["v_zero"] < 100 * losses["f32"], losses


def test_reference_validates_its_options():
    with pytest.raises(ValueError, match="v_norm"):
        qq.adam4_reference(1e-3, v_norm="row")
    assert isinstance(qq.adam4_reference(1e-3), dlopt.GradientTransformation)
