"""Backoff, poll intervals, `sleep` and Retry-After parsing: pure functions on a seeded Random."""

from __future__ import annotations

import email.utils
import random
from typing import Any, Dict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otad.errors import ConfigError
from otad.hawkbit.ddi import MalformedResponse
from otad.hawkbit.policy import PollPolicy, parse_sleep, retry_after
from otad.retry import Backoff, ResumePolicy

NOW = 1_800_000_000.0


def test_backoff_ceiling_doubles_from_base_up_to_cap() -> None:
    b = Backoff(base_s=1, cap_s=20)
    assert [b.ceiling(a) for a in range(7)] == [1, 2, 4, 8, 16, 20, 20]
    assert b.ceiling(10_000) == 20  # no overflow for huge attempt numbers


def test_backoff_full_jitter_stays_within_zero_and_ceiling_and_spreads() -> None:
    b, rng = Backoff(base_s=1, cap_s=60), random.Random(7)
    for attempt in range(12):
        draws = [b.next(attempt, rng) for _ in range(200)]
        assert all(0 <= d <= b.ceiling(attempt) for d in draws)
        assert max(draws) - min(draws) > b.ceiling(attempt) / 2  # really jittered


def test_backoff_is_reproducible_with_a_seeded_random() -> None:
    b = Backoff()
    assert [b.next(3, random.Random(1)) for _ in range(3)] == [b.next(3, random.Random(1))] * 3


def test_backoff_without_jitter_returns_the_ceiling() -> None:
    assert Backoff(base_s=2, cap_s=10, jitter="none").next(2, random.Random(0)) == 8


@pytest.mark.parametrize("kw, field", [({"base_s": 0}, "base_s"), ({"cap_s": 0.5}, "cap_s"),
                                       ({"jitter": "equal"}, "jitter"), ({"base_s": float("nan")}, "base_s")])
def test_backoff_rejects_bad_values_naming_the_field(kw: Dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=f"Backoff.{field}"):
        Backoff(**kw)


def test_poll_interval_only_jitters_downwards() -> None:
    p, rng = PollPolicy(jitter_fraction=0.15), random.Random(3)
    draws = [p.interval(300, rng) for _ in range(500)]
    assert all(255 <= d <= 300 for d in draws)
    assert min(draws) < 260 and max(draws) > 295


def test_poll_interval_clamps_the_servers_sleep() -> None:
    p, rng = PollPolicy(min_s=30, max_s=86400, jitter_fraction=0), random.Random(0)
    assert p.interval(1, rng) == 30
    assert p.interval(10 ** 9, rng) == 86400
    assert p.interval(float("nan"), rng) == 86400
    assert PollPolicy(min_s=1, jitter_fraction=0.1).interval(1, rng) == 1  # never below min_s


def test_first_delay_is_at_most_sleep_and_first_poll_max() -> None:
    p, rng = PollPolicy(), random.Random(5)
    assert all(0 <= p.first_delay(300, rng) <= 60 for _ in range(200))
    assert all(0 <= p.first_delay(5, rng) <= 5 for _ in range(200))


def test_error_delay_backs_off_up_to_the_poll_interval_and_honours_retry_after() -> None:
    p, rng = PollPolicy(min_s=1), random.Random(9)
    assert all(1 <= p.error_delay(a, 40, rng) <= 40 for a in range(20) for _ in range(20))
    assert max(p.error_delay(0, 40, rng) for _ in range(50)) <= 1.0
    assert p.error_delay(0, 40, rng, retry_after_s=120) == 120
    assert p.error_delay(0, 40, rng, retry_after_s=99999) == 3600


@given(sleep=st.floats(min_value=0, max_value=1e7), seed=st.integers(0, 2 ** 32))
def test_poll_interval_is_always_within_min_and_clamped_sleep(sleep: float, seed: int) -> None:
    p = PollPolicy(min_s=1, max_s=86400, jitter_fraction=0.1)
    d = p.interval(sleep, random.Random(seed))
    assert p.min_s <= d <= p.clamp(sleep)


@pytest.mark.parametrize("kw, field", [({"min_s": 0}, "min_s"), ({"max_s": 0.5}, "max_s"),
                                       ({"jitter_fraction": 1.0}, "jitter_fraction"),
                                       ({"first_poll_max_s": -1}, "first_poll_max_s")])
def test_poll_policy_rejects_bad_values_naming_the_field(kw: Dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=f"PollPolicy.{field}"):
        PollPolicy(**kw)


def test_resume_policy_rejects_fewer_reopens_than_attempts() -> None:
    with pytest.raises(ConfigError, match="max_reopens"):
        ResumePolicy(max_attempts=10, max_reopens=5)


@pytest.mark.parametrize("text, seconds", [
    ("00:05:00", 300), ("23:59:59", 86399), ("26:00:00", 93600), ("05:00", 300), ("30", 30), ("90", 90),
    ("PT26H", 93600), ("P1DT2H", 93600), ("PT30S", 30), ("PT1H30M", 5400), ("P1D", 86400), ("PT0.5S", 0.5),
    ("P1W", 604800), (" 00:00:01 ", 1), ("pt5m", 300)])
def test_parse_sleep_accepts_clock_and_iso_8601_forms(text: str, seconds: float) -> None:
    assert parse_sleep(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "00:60:00", "00:00:60", "1:2:3:4", "-5", "P", "PT", "P1M2",
                                  "P1Y", "5m", "00:05:00Z", "PT5H10"])
def test_parse_sleep_rejects_malformed_values_quoting_them(text: str) -> None:
    with pytest.raises(MalformedResponse) as err:
        parse_sleep(text)
    assert err.value.field == "config.polling.sleep"
    assert repr(text) in str(err.value)


def test_retry_after_reads_seconds_and_caps_at_an_hour() -> None:
    assert retry_after("7", NOW) == 7
    assert retry_after(" 120 ", NOW) == 120
    assert retry_after("999999", NOW) == 3600


def test_retry_after_reads_an_http_date() -> None:
    header = email.utils.formatdate(NOW + 90, usegmt=True)
    assert retry_after(header, NOW) == pytest.approx(90)
    assert retry_after(email.utils.formatdate(NOW - 90, usegmt=True), NOW) == 0
    assert retry_after(email.utils.formatdate(NOW + 86400, usegmt=True), NOW) == 3600


@pytest.mark.parametrize("header", [None, "", "soon", "-5", "1.5", "Mon, 99 Foo 2026 25:61:00 GMT"])
def test_retry_after_is_none_when_absent_or_unreadable(header: str) -> None:
    assert retry_after(header, NOW) is None
