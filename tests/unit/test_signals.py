"""Stop requests (otad.signals): SIGINT, SIGTERM and SIGHUP raise Interrupted, except inside a
shielded block, which finishes first; only the first request raises."""

from __future__ import annotations

import os
import signal

import pytest

from otad.errors import Interrupted, OtadError
from otad.signals import handled, shielded


@pytest.mark.parametrize("signum,verb", [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated"),
                                         (signal.SIGHUP, "terminated")])
def test_each_stop_signal_raises_interrupted_where_the_command_is(signum: int, verb: str) -> None:
    before = signal.getsignal(signum)
    with handled():
        with pytest.raises(Interrupted) as info:
            os.kill(os.getpid(), signum)
    assert info.value.signum == signum and str(info.value) == verb
    assert not isinstance(info.value, OtadError)  # no failure handler may take it for a failed install
    assert signal.getsignal(signum) == before


def test_interrupted_says_what_it_stopped_and_what_that_left() -> None:
    stop = Interrupted(signal.SIGTERM).during("installing slot b", "slot b marked not installed")
    assert str(stop) == "terminated while installing slot b; slot b marked not installed"
    assert stop.exit_code == 130


def test_a_shielded_block_finishes_before_the_stop_request_is_raised() -> None:
    done = []
    with handled():
        with pytest.raises(Interrupted) as info:
            with shielded():
                os.kill(os.getpid(), signal.SIGHUP)
                done.append("after the signal")
        assert done == ["after the signal"] and info.value.signum == signal.SIGHUP


def test_a_shielded_block_that_fails_still_raises_the_stop_request() -> None:
    with handled():
        with pytest.raises(Interrupted) as info:
            with shielded():
                os.kill(os.getpid(), signal.SIGTERM)
                raise OtadError("the env write failed")
    assert isinstance(info.value.__context__, OtadError)


def test_only_the_first_stop_request_raises_while_the_command_winds_down() -> None:
    cleaned = []
    with handled():
        with pytest.raises(Interrupted):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # a second one during the cleanup
                cleaned.append("record marked")
    assert cleaned == ["record marked"]
