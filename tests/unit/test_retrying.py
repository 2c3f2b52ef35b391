"""The one retry helper (spot_workflows/retrying.py): tenacity driven by a Backoff, with a
recording sleep and a fake clock, so nothing here waits."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest
from botocore.exceptions import ClientError, NoCredentialsError
from google.auth import exceptions as auth_exc

from spot_workflows.errors import ConfigError, CredentialsError
from spot_workflows.retrying import Backoff, async_retrying, call, retrying
from spot_workflows.runtime.store.retry import RetryPolicy, is_transient


class Clock:
    """A fake monotonic clock; ``sleep`` records the wait and advances the clock by it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Flaky:
    """Raises ``errors`` in turn (then returns "ok"); each call takes ``cost_s`` on ``clock``."""

    def __init__(self, *errors: BaseException, clock: Clock | None = None, cost_s: float = 0.0):
        self.errors, self.calls, self.clock, self.cost_s = list(errors), 0, clock, cost_s
        self.raised: list[BaseException] = []

    def __call__(self) -> str:
        self.calls += 1
        if self.clock is not None:
            self.clock.now += self.cost_s
        if self.errors:
            self.raised.append(self.errors.pop(0))
            raise self.raised[-1]
        return "ok"


def always(exc_type: type[BaseException] = ConnectionError, n: int = 100) -> Flaky:
    return Flaky(*(exc_type(f"boom {i}") for i in range(n)))


def transient(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionError)


def test_ceilings_are_exponential_and_capped_and_the_total_is_bounded():
    b = Backoff(attempts=6, base_s=0.5, cap_s=4.0)
    assert [b.ceiling(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert b.max_total_s == pytest.approx(11.5)
    assert Backoff(attempts=6, base_s=0.5, cap_s=4.0, total_s=3.0).max_total_s == 3.0
    assert Backoff(attempts=1).max_total_s == 0


def test_without_jitter_the_waits_are_the_ceilings():
    clock = Clock()
    b = Backoff(attempts=6, base_s=0.5, cap_s=4.0, jitter=False)
    fn = Flaky(*(ConnectionError() for _ in range(5)))
    assert call(fn, b, transient, what="x", sleep=clock.sleep) == "ok"
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 4.0] and fn.calls == 6


def test_jitter_stays_within_zero_and_the_capped_ceiling():
    b = Backoff(attempts=12, base_s=0.5, cap_s=4.0)
    sleeps: list[float] = []
    rng = random.Random(7)
    with pytest.raises(ConnectionError):
        call(always(), b, transient, what="x", sleep=sleeps.append, rng=rng.random)
    assert len(sleeps) == 11
    assert all(0 <= s <= b.ceiling(n) for n, s in enumerate(sleeps, start=1))
    assert max(sleeps) <= 4.0 and len(set(sleeps)) == len(sleeps)  # drawn, not fixed
    assert any(s < b.ceiling(n) * 0.9 for n, s in enumerate(sleeps, start=1))


def test_stops_after_the_attempts_and_reraises_the_original_exception():
    sleeps: list[float] = []
    fn = always()
    with pytest.raises(ConnectionError) as err:
        call(
            fn, Backoff(attempts=4, base_s=0.1, cap_s=1.0), transient, what="x", sleep=sleeps.append
        )
    assert fn.calls == 4 and len(sleeps) == 3
    assert err.value is fn.raised[-1]  # the last error itself, not a tenacity.RetryError


def test_stops_before_a_wait_that_would_pass_total_s():
    clock = Clock()
    b = Backoff(attempts=50, base_s=1.0, cap_s=10.0, total_s=5.0, jitter=False)
    fn = always()
    with pytest.raises(ConnectionError):
        call(fn, b, transient, what="x", sleep=clock.sleep, clock=clock)
    # waits 1 (t=1), 2 (t=3); a wait of 4 would end at t=7 > 5: stop after the third try
    assert clock.sleeps == [1.0, 2.0] and fn.calls == 3


def test_total_s_counts_the_time_spent_in_the_calls_too():
    clock = Clock()
    b = Backoff(attempts=50, base_s=1.0, cap_s=1.0, total_s=10.0, jitter=False)
    fn = Flaky(*(ConnectionError() for _ in range(50)), clock=clock, cost_s=2.0)
    with pytest.raises(ConnectionError):
        call(fn, b, transient, what="x", sleep=clock.sleep, clock=clock)
    # tries end at t=2, 5, 8, 11 (each wait 1): after the 4th a wait would end at 12 > 10
    assert fn.calls == 4 and clock.sleeps == [1.0, 1.0, 1.0]
    assert clock.now - 1000.0 <= 10.0 + 2.0  # the bound, give or take one call


def test_an_error_the_predicate_rejects_is_raised_at_once():
    sleeps: list[float] = []
    fn = Flaky(ValueError("bad request"), ConnectionError())
    with pytest.raises(ValueError, match="bad request"):
        call(fn, Backoff(attempts=5), transient, what="x", sleep=sleeps.append)
    assert fn.calls == 1 and sleeps == []


def test_success_after_transient_errors_returns_the_value_and_logs_one_line_per_retry(caplog):
    sleeps: list[float] = []
    fn = Flaky(ConnectionError("reset by peer"), ConnectionError("again"))
    b = Backoff(attempts=3, base_s=0.5, cap_s=0.5, jitter=False)
    with caplog.at_level(logging.WARNING, "spot_workflows.retry"):
        assert (
            call(fn, b, transient, what="bucket/key", kind="storage", sleep=sleeps.append) == "ok"
        )
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "transient storage error on bucket/key (try 1 of 3): ConnectionError: reset by peer; "
        "retrying in 0.50s",
        "transient storage error on bucket/key (try 2 of 3): ConnectionError: again; "
        "retrying in 0.50s",
    ]


def test_on_retry_runs_before_each_wait_and_a_retrying_can_be_iterated():
    seen: list[int] = []
    loop = retrying(
        Backoff(attempts=3, base_s=0.0, cap_s=0.0),
        transient,
        what="x",
        sleep=lambda s: None,
        on_retry=lambda rs: seen.append(rs.attempt_number),
    )
    fn = Flaky(ConnectionError(), ConnectionError())
    for attempt in loop:
        with attempt:
            result = fn()
    assert result == "ok" and seen == [1, 2]


def test_async_retrying_awaits_the_injected_sleep():
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def run(fn: Flaky, attempts: int) -> str:
        b = Backoff(attempts=attempts, base_s=1.0, cap_s=2.0, jitter=False)
        async for attempt in async_retrying(b, transient, what="describe", sleep=fake_sleep):
            with attempt:
                return fn()
        raise AssertionError("unreachable")

    assert asyncio.run(run(Flaky(ConnectionError(), ConnectionError()), 3)) == "ok"
    assert sleeps == [1.0, 2.0]
    fn = always()
    with pytest.raises(ConnectionError) as err:
        asyncio.run(run(fn, 2))
    assert fn.calls == 2 and err.value is fn.raised[-1]


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"attempts": 0}, "attempts"),
        ({"attempts": True}, "attempts"),
        ({"base_s": -1.0}, "base_s"),
        ({"base_s": 5.0, "cap_s": 1.0}, "cap_s"),
        ({"total_s": 0.0}, "total_s"),
    ],
)
def test_a_bad_backoff_is_a_config_error_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field) as err:
        Backoff(**kwargs)
    assert "\n" not in str(err.value)


# -- the storage decision: credentials are never retried ---------------------------------------


def s3fs_wrapped(code: str, message: str) -> PermissionError:
    """What s3fs raises for a rejected request: a PermissionError caused by the ClientError."""
    cause = ClientError({"Error": {"Code": code, "Message": message}}, "PutObject")
    try:
        raise PermissionError(message) from cause
    except PermissionError as exc:
        return exc


@pytest.mark.parametrize(
    "make,cloud_hint",
    [
        (lambda: NoCredentialsError(), "AWS_ACCESS_KEY_ID"),
        (lambda: s3fs_wrapped("InvalidAccessKeyId", "key AKIASECRETSECRET unknown"), "AWS_PROFILE"),
        (lambda: s3fs_wrapped("SignatureDoesNotMatch", "sig s3cr3t-v4lue"), "AWS_PROFILE"),
        (lambda: s3fs_wrapped("ExpiredToken", "token s3cr3t-v4lue expired"), "AWS_SESSION_TOKEN"),
        (lambda: auth_exc.DefaultCredentialsError("no ADC"), "application-default login"),
        (lambda: auth_exc.RefreshError("invalid_grant s3cr3t-v4lue"), "GOOGLE_APPLICATION"),
    ],
)
def test_store_credentials_errors_are_not_retried_and_say_how_to_fix(make, cloud_hint):
    sleeps: list[float] = []
    fn = Flaky(*(make() for _ in range(5)))
    assert not is_transient(make())
    with pytest.raises(CredentialsError) as err:
        RetryPolicy(sleep=sleeps.append).call(fn, what="ckpt/run/ledger.json")
    assert fn.calls == 1 and sleeps == []
    text = str(err.value)
    assert cloud_hint in text and "ckpt/run/ledger.json" in text and "\n" not in text
    assert "s3cr3t" not in text and "AKIASECRET" not in text
    assert err.value.__cause__ is fn.raised[0]


@pytest.mark.parametrize(
    "make",
    [
        lambda: s3fs_wrapped("AccessDenied", "Access Denied"),
        lambda: OSError("Forbidden: bucket/key\nCaller does not have storage.objects.create"),
    ],
    ids=["s3-access-denied", "gcs-403"],
)
def test_store_permission_errors_stay_permanent_storage_errors_not_credentials(make):
    sleeps: list[float] = []
    fn = Flaky(make(), make())
    with pytest.raises(OSError):
        RetryPolicy(sleep=sleeps.append).call(fn, what="x")
    assert fn.calls == 1 and sleeps == []


def test_store_policy_keeps_its_numbers_and_validates_them():
    policy = RetryPolicy(attempts=3, base_s=0.2, max_s=0.3, rng=random.Random(3))
    assert policy.backoff == Backoff(attempts=3, base_s=0.2, cap_s=0.3)
    assert policy.max_total_s == pytest.approx(0.5)
    assert 0 <= policy.delay(0) <= 0.2 and 0 <= policy.delay(5) <= 0.3
    with pytest.raises(ConfigError, match="max_s"):
        RetryPolicy(base_s=2.0, max_s=1.0)
    sleeps: list[float] = []
    fn = always(OSError)
    with pytest.raises(OSError):
        RetryPolicy(attempts=3, sleep=sleeps.append).call(fn, what="x", retry=False)
    assert fn.calls == 1 and sleeps == []
