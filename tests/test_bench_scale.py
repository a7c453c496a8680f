"""The scaling benchmark's steady rate: trials/s while K trials ran at once."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.bench_scale import steady_rate


def _worker(start: float, period: float, n: int) -> list[tuple[float, float]]:
    """``n`` back-to-back trials of ``period`` seconds from ``start``, each ending 0.01 s
    before the next one starts (the worker's ask and tell)."""
    return [(start + i * period, start + (i + 1) * period - 0.01) for i in range(n)]


def test_one_worker_is_its_window() -> None:
    spans = _worker(10.0, 0.5, 20)
    assert steady_rate(spans, 1) == pytest.approx(20 / (spans[-1][1] - spans[0][0]))


def test_a_late_worker_and_a_lone_last_trial_are_left_out() -> None:
    # Worker A from t=0, worker B from t=2 (its start-up), 0.5 s trials; A's last ends at 8,
    # B's at 9. While both ran, 4 trials a second finished; the window (first start to last
    # finish: 30 trials in 9 s) says less.
    spans = _worker(0.0, 0.5, 16) + _worker(2.0, 0.5, 14)
    window_rate = len(spans) / (max(e for _, e in spans) - min(s for s, _ in spans))
    assert window_rate == pytest.approx(30 / 9, rel=0.01)
    assert steady_rate(spans, 2) == pytest.approx(4.0, rel=0.05)


def test_a_trial_with_no_time_on_the_clock_counts_where_it_ends() -> None:
    # Two trials overlap from 0.2 to 1.0; one more ends (and starts) at 0.5 within that.
    spans = [(0.0, 1.0), (0.5, 0.5), (0.2, 2.0)]
    assert steady_rate(spans, 2) == pytest.approx((0.8 + 1 + 0.8 / 1.8) / 0.8)


def test_never_k_at_once_gives_none() -> None:
    assert steady_rate(_worker(0.0, 0.5, 10), 2) is None
    # Touching is not overlapping: one trial ends as the next one starts.
    assert steady_rate([(0.0, 1.0), (1.0, 2.0)], 2) is None


@given(
    st.lists(st.floats(0.05, 2.0), min_size=1, max_size=30),
    st.lists(st.floats(0.05, 2.0), min_size=1, max_size=30),
    st.floats(0.0, 10.0),
)
def test_two_workers_never_exceed_their_busiest_pace(
    a: list[float], b: list[float], late: float
) -> None:
    """Two serial workers finish at most 2 / (shortest trial) a second while both run."""
    spans = []
    for start, periods in ((0.0, a), (late, b)):
        t = start
        for p in periods:
            spans.append((t, t + p))
            t += p
    got = steady_rate(spans, 2)
    if got is not None:
        assert 0 <= got <= 2 / min(a + b) + 1e-9
