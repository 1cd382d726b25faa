"""Random draws of a CPU ``torch.Generator``, made in Python: the same numbers, no tensor operations.

A training step makes about a thousand scalar draws (which views flip, their angles, crops and colour factors, the
text rows of each term). Drawn with ``torch.rand(1, generator=g)`` and ``.item()``, each is three or four
dispatched operations. :class:`Draws` reads the generator's Mersenne Twister state once, continues the same
sequence with Python's own MT19937 (``random.Random``), applies the transformations torch's CPU kernels apply
(``uniform_``, ``randint``, ``randperm``), and writes the state back when it is closed, so the generator ends
exactly where the tensor draws would have left it.

The transformations are checked against torch once per process on a probe generator (:func:`available`); where
they do not match this torch build, or for a generator that is not on the CPU, :class:`Draws` makes every draw
with torch instead. Either way the numbers are torch's.
"""

from __future__ import annotations

import functools
import random
import struct

import numpy as np
import torch

_N = 624  # MT19937 state words
_HEADER = struct.Struct("<QiiQ")  # seed, left, seeded, next: the start of torch's CPU generator state
_WORDS = struct.Struct(f"<{_N}Q")  # the state words, stored as 64-bit integers


def _round_f32(t: float, e: float) -> float:
    """The float32 nearest to ``t + e`` (ties to even), where ``t`` is a double and ``e`` its exact error."""
    a = np.float32(t)
    if e == 0.0 or float(a) == t:
        return float(a)
    neighbour = np.nextafter(a, np.float32(np.inf) if t > float(a) else np.float32(-np.inf))
    if (float(a) + float(neighbour)) / 2 != t:  # t was not halfway: t + e rounds as t does
        return float(a)
    return float(neighbour) if (e > 0) == (float(neighbour) > float(a)) else float(a)


def _fused_uniform(bits: int, low: np.float32, span: np.float32) -> float:
    """``x * span + low`` with a single rounding to float32, x = the low 24 bits / 2**24 (exact in float32)."""
    product = (bits & 0xFFFFFF) * 2.0**-24 * float(span)  # 24 x 24 bits: exact in a double
    t = product + float(low)
    b = t - product  # TwoSum: the exact error of the addition
    e = (product - (t - b)) + (float(low) - b)
    return _round_f32(t, e)


def _rounded_uniform(bits: int, low: np.float32, span: np.float32) -> float:
    """``x * span + low`` rounded to float32 after the product and after the sum."""
    x = np.float32((bits & 0xFFFFFF) * 2.0**-24)
    return float(np.float32(np.float32(x * span) + low))


class Draws:
    """Draws from ``g`` (a CPU ``torch.Generator``) as torch makes them; :meth:`close` (or leaving a ``with``
    block) hands the generator its advanced state. Do not draw from ``g`` itself while a ``Draws`` is open."""

    def __init__(self, g: torch.Generator, _uniform=None) -> None:
        self.g = g
        self._uniform = _uniform or (available() if g.device.type == "cpu" else None)
        self._mt: random.Random | None = None
        if self._uniform is not None:
            state = bytes(g.get_state().numpy())
            _, left, _, _ = _HEADER.unpack_from(state, 0)
            words = tuple(w & 0xFFFFFFFF for w in _WORDS.unpack_from(state, _HEADER.size))
            self._state = state
            self._mt = random.Random()
            self._mt.setstate((3, (*words, 625 - left if left > 1 else _N), None))

    def __enter__(self) -> Draws:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Write the state after the draws back into the generator."""
        if self._mt is None:
            return
        _, internal, _ = self._mt.getstate()
        words, index = internal[:_N], internal[_N]
        seed, _, seeded, _ = _HEADER.unpack_from(self._state, 0)
        left, nxt = (1, _N) if index >= _N else (625 - index, index)
        state = bytearray(self._state)
        _HEADER.pack_into(state, 0, seed, left, seeded, nxt)
        _WORDS.pack_into(state, _HEADER.size, *words)
        self.g.set_state(torch.frombuffer(state, dtype=torch.uint8).clone())
        self._mt = None

    def _bits(self) -> int:
        if self._mt is None:
            raise RuntimeError("these draws are closed")
        return self._mt.getrandbits(32)

    def uniform(self, low: float, high: float) -> float:
        """``torch.empty(1).uniform_(low, high, generator=g).item()``."""
        if self._uniform is None:
            return float(torch.empty(1).uniform_(low, high, generator=self.g).item())
        low32, high32 = np.float32(low), np.float32(high)
        return self._uniform(self._bits(), low32, np.float32(high32 - low32))

    def rand(self) -> float:
        """``torch.rand(1, generator=g).item()``."""
        if self._uniform is None:
            return float(torch.rand(1, generator=self.g).item())
        return (self._bits() & 0xFFFFFF) * 2.0**-24

    def randint(self, low: int, high: int) -> int:
        """``torch.randint(low, high, (1,), generator=g).item()``."""
        if self._uniform is None:
            return int(torch.randint(low, high, (1,), generator=self.g).item())
        span = high - low
        if not 0 < span < 2**32:
            raise ValueError(f"randint needs 0 < high - low < 2**32, got [{low}, {high})")
        return self._bits() % span + low

    def randints(self, high: int, n: int) -> list[int]:
        """``torch.randint(high, (n,), generator=g).tolist()``."""
        if self._uniform is None:
            return torch.randint(high, (n,), generator=self.g).tolist()
        return [self.randint(0, high) for _ in range(n)]

    def randperm(self, n: int) -> list[int]:
        """``torch.randperm(n, generator=g).tolist()`` for a small ``n``."""
        if self._uniform is None:
            return torch.randperm(n, generator=self.g).tolist()
        perm = list(range(n))
        for i in range(n - 1):
            j = self._bits() % (n - i) + i
            perm[i], perm[j] = perm[j], perm[i]
        return perm


@functools.cache
def available():
    """The float transformation that reproduces this torch build's ``uniform_``, or None to draw with torch.

    torch computes ``x * (high - low) + low`` in float32, with a fused multiply-add where the kernel was compiled
    for a CPU that has one; both are tried on a probe generator, with integer and permutation draws.
    """
    ranges = [(0.0, 1.0), (-15.0, 15.0), (0.6, 1.0), (0.9, 1.1), (-0.1, 0.1), (-29.8, 29.8), (0.25, 3.75)]
    for uniform in (_fused_uniform, _rounded_uniform):
        g = torch.Generator().manual_seed(20221005)
        expected = []
        for k in range(700):
            low, high = ranges[k % len(ranges)]
            expected.append(float(torch.empty(1).uniform_(low, high, generator=g).item()))
            expected.append(int(torch.randint(3, 3 + 1 + k % 40, (1,), generator=g).item()))
            expected.append(torch.randperm(4, generator=g).tolist())
        after = g.get_state()
        probe = torch.Generator().manual_seed(20221005)
        draws = Draws(probe, uniform)
        got = []
        for k in range(700):
            low, high = ranges[k % len(ranges)]
            got.append(draws.uniform(low, high))
            got.append(draws.randint(3, 3 + 1 + k % 40))
            got.append(draws.randperm(4))
        draws.close()
        if got == expected and torch.equal(probe.get_state(), after):
            return uniform
    return None
