"""switch_interval.py: the start-up's short interpreter switch interval, and the old one back
afterwards, also after an error (bench/gil_convoy.py measures why)."""

import sys

import pytest

from hpc_ppo.switch_interval import START_UP_SWITCH_INTERVAL_S, short_switch_interval


@pytest.fixture
def caller_interval():
    """A value of the caller's (not Python's default), which must come back."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.004)
    yield 0.004
    sys.setswitchinterval(before)


def test_short_inside_and_the_callers_back_after(caller_interval):
    with short_switch_interval():
        assert sys.getswitchinterval() == pytest.approx(START_UP_SWITCH_INTERVAL_S)
    assert sys.getswitchinterval() == pytest.approx(caller_interval)


def test_the_callers_back_after_an_error(caller_interval):
    with pytest.raises(RuntimeError, match="start failed"), short_switch_interval():
        raise RuntimeError("start failed")
    assert sys.getswitchinterval() == pytest.approx(caller_interval)


def test_never_longer_than_the_callers(caller_interval):
    with short_switch_interval(0.05):
        assert sys.getswitchinterval() == pytest.approx(caller_interval)
