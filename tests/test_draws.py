"""text2live.draws makes a generator's draws in Python: the numbers torch makes, and the state torch leaves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from text2live import draws as draws_module
from text2live.draws import Draws, _round_f32

RANGES = [(0.0, 1.0), (-15.0, 15.0), (0.6, 1.0), (0.9, 1.1), (-0.1, 0.1), (-29.8, 29.8), (-22.4, 22.4), (3.0, 7.5)]


def _sequence(source, n: int = 1500) -> list:
    """A long mixed sequence of the draws a step makes, from a torch generator or from Draws of one."""
    out = []
    for k in range(n):
        low, high = RANGES[k % len(RANGES)]
        if isinstance(source, Draws):
            out += [source.uniform(low, high), source.rand(), source.randint(0, 2 + k % 300)]
            out += [source.randperm(4), source.randints(1 + k % 14, 1 + k % 5)]
        else:
            g = source
            out.append(float(torch.empty(1).uniform_(low, high, generator=g).item()))
            out.append(float(torch.rand(1, generator=g).item()))
            out.append(int(torch.randint(0, 2 + k % 300, (1,), generator=g).item()))
            out.append(torch.randperm(4, generator=g).tolist())
            out.append(torch.randint(1 + k % 14, (1 + k % 5,), generator=g).tolist())
    return out


@pytest.mark.parametrize("seed", [0, 1234, 2**40 + 7])
def test_draws_equal_torch_and_leave_the_generator_where_torch_would(seed):
    by_torch = torch.Generator().manual_seed(seed)
    by_python = torch.Generator().manual_seed(seed)
    expected = _sequence(by_torch)
    with Draws(by_python) as d:
        got = _sequence(d)
    assert got == expected
    assert torch.equal(by_python.get_state(), by_torch.get_state())
    assert torch.rand(5, generator=by_python).tolist() == torch.rand(5, generator=by_torch).tolist()


def test_draws_continue_a_generator_that_torch_has_drawn_from():
    a, b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    torch.rand(1000, generator=a), torch.rand(1000, generator=b)  # the state mid-way through a block
    with Draws(b) as d:
        got = [d.uniform(-1.0, 2.0) for _ in range(700)]  # crosses a regeneration of the state (624 words)
    assert got == [float(torch.empty(1).uniform_(-1.0, 2.0, generator=a).item()) for _ in range(700)]
    assert torch.equal(a.get_state(), b.get_state())


def test_without_a_matching_transformation_the_draws_are_torchs(monkeypatch):
    monkeypatch.setattr(draws_module, "available", lambda: None)
    by_torch, by_fallback = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    expected = _sequence(by_torch, 200)
    with Draws(by_fallback) as d:
        assert _sequence(d, 200) == expected
    assert torch.equal(by_fallback.get_state(), by_torch.get_state())


def test_this_torch_build_is_matched():
    assert draws_module.available() is not None  # else every step falls back to tensor draws (correct, slower)


def test_closed_draws_refuse_to_draw():
    d = Draws(torch.Generator().manual_seed(0))
    d.close()
    with pytest.raises(RuntimeError, match="closed"):
        d.rand()


def test_float32_rounding_of_a_sum_known_exactly():
    one = 1.0
    half_ulp = 2.0**-24  # 1 + 2**-24 lies halfway between the float32s 1 and 1 + 2**-23
    assert _round_f32(one + half_ulp, 0.0) == 1.0  # a tie: to even
    assert _round_f32(one + half_ulp, 1e-30) == float(np.float32(1.0 + 2.0**-23))  # just above the tie: up
    assert _round_f32(one + half_ulp, -1e-30) == 1.0
    assert _round_f32(0.1, 0.0) == float(np.float32(0.1))
