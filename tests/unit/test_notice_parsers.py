"""The metadata-answer parsers: table-driven cases, then fuzzing with hostile input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spot_workflows.core.outcomes import NoticeKind, TerminationNotice
from spot_workflows.errors import NoticeError
from spot_workflows.runtime.worker.notices import (
    parse_aws_instance_action,
    parse_aws_rebalance,
    parse_gce_maintenance,
    parse_gce_preempted,
)

NOW = datetime(2026, 1, 1, 8, 20, 0, tzinfo=UTC)
PARSERS = [
    parse_aws_instance_action,
    parse_aws_rebalance,
    parse_gce_preempted,
    parse_gce_maintenance,
]


# -- AWS spot/instance-action -----------------------------------------------------------------
@pytest.mark.parametrize(
    "body, action, deadline",
    [
        (
            b'{"action": "terminate", "time": "2026-01-01T08:22:00Z"}',
            "terminate",
            datetime(2026, 1, 1, 8, 22, tzinfo=UTC),
        ),
        (
            b'{"action": "stop", "time": "2026-01-01T08:22:00Z"}',
            "stop",
            datetime(2026, 1, 1, 8, 22, tzinfo=UTC),
        ),
        (
            b'{"action":"hibernate","time":"2026-01-01T08:22:00Z"}\n',
            "hibernate",
            datetime(2026, 1, 1, 8, 22, tzinfo=UTC),
        ),
        (  # an offset is normalised to UTC; a naive time is taken as UTC
            b'{"action": "terminate", "time": "2026-01-01T09:22:00+01:00"}',
            "terminate",
            datetime(2026, 1, 1, 8, 22, tzinfo=UTC),
        ),
        (
            b'{"action": "terminate", "time": "2026-01-01T08:22:00"}',
            "terminate",
            datetime(2026, 1, 1, 8, 22, tzinfo=UTC),
        ),
    ],
)
def test_aws_instance_action_is_an_interruption_with_its_deadline(body, action, deadline):
    notice = parse_aws_instance_action(200, body, now=NOW, instance_id="i-0abc")
    assert notice.kind is NoticeKind.INTERRUPTION
    assert notice.source == "aws" and notice.action == action
    assert notice.deadline == deadline and notice.deadline.tzinfo is not None
    assert notice.seen_at == NOW and notice.instance_id == "i-0abc"
    # it round-trips through the notice file format
    assert TerminationNotice.model_validate_json(notice.model_dump_json()) == notice


def test_aws_404_means_no_notice_whatever_the_body():
    assert parse_aws_instance_action(404, b"<html>404 - Not Found</html>", now=NOW) is None
    assert parse_aws_rebalance(404, b"", now=NOW) is None


def test_now_may_be_epoch_seconds():
    notice = parse_gce_preempted(200, b"TRUE", now=NOW.timestamp())
    assert notice.seen_at == NOW and notice.deadline == NOW + timedelta(seconds=30)


BAD_AWS = [
    (200, b""),
    (200, b"not json"),
    (200, b"[]"),
    (200, b'"terminate"'),
    (200, b"{}"),
    (200, b'{"action": "terminate"}'),
    (200, b'{"time": "2026-01-01T08:22:00Z"}'),
    (200, b'{"action": 1, "time": "2026-01-01T08:22:00Z"}'),
    (200, b'{"action": "", "time": "2026-01-01T08:22:00Z"}'),
    (200, b'{"action": "terminate", "time": 1767255720}'),
    (200, b'{"action": "terminate", "time": "tomorrow"}'),
    (200, b'{"action": "terminate", "time": "2026-13-01T08:22:00Z"}'),
    (200, b'{"action": "terminate", "time": "0001-01-01T00:00:00+01:00"}'),  # overflows in UTC
    (200, b'{"action": {"x": [1, 2]}, "time": ["2026"]}'),
    (200, b"\x00\xff\xfe garbage"),
    (200, b"[" * 100_000),  # nested junk: RecursionError inside json
    (200, b'{"action": "terminate", "time": "' + b"9" * 100_000 + b'"}'),
    (200, b" " * 200_000),  # huge body
    (500, b"Internal Server Error"),
    (401, b""),
    (403, b""),
]


@pytest.mark.parametrize("status, body", BAD_AWS, ids=lambda v: repr(v)[:40])
def test_aws_instance_action_junk_is_a_notice_error(status, body):
    with pytest.raises(NoticeError) as info:
        parse_aws_instance_action(status, body, now=NOW)
    assert len(str(info.value)) < 1000  # the quote of what was received is truncated


def test_notice_error_quotes_what_was_received():
    with pytest.raises(NoticeError, match="not json"):
        parse_aws_instance_action(200, b"not json at all", now=NOW)
    with pytest.raises(NoticeError, match="HTTP 500"):
        parse_aws_instance_action(500, b"boom", now=NOW)


# -- AWS rebalance ----------------------------------------------------------------------------
def test_aws_rebalance_is_advisory():
    notice = parse_aws_rebalance(200, b'{"noticeTime": "2026-01-01T08:17:00Z"}', now=NOW)
    assert notice.kind is NoticeKind.REBALANCE and notice.deadline is None
    assert notice.detail["noticeTime"] == "2026-01-01T08:17:00Z"


@pytest.mark.parametrize(
    "status, body",
    [(200, b"{}"), (200, b'{"noticeTime": 5}'), (200, b"junk"), (500, b""), (200, b"[1]")],
)
def test_aws_rebalance_junk_is_a_notice_error(status, body):
    with pytest.raises(NoticeError):
        parse_aws_rebalance(status, body, now=NOW)


# -- GCE ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [b"TRUE", b"TRUE\n", b" TRUE "])
def test_gce_preempted_true_gives_thirty_seconds(body):
    notice = parse_gce_preempted(200, body, now=NOW)
    assert notice.kind is NoticeKind.INTERRUPTION and notice.source == "gcp"
    assert notice.deadline == NOW + timedelta(seconds=30)


def test_gce_preempted_false_is_no_notice():
    assert parse_gce_preempted(200, b"FALSE", now=NOW) is None


@pytest.mark.parametrize(
    "status, body",
    [
        (200, b"true"),
        (200, b"YES"),
        (200, b""),
        (200, b"\xff\xfe"),
        (200, b"TRUE" * 1000),
        (404, b"FALSE"),
        (403, b"Missing Metadata-Flavor:Google header."),
        (500, b"TRUE"),
    ],
)
def test_gce_preempted_junk_is_a_notice_error(status, body):
    with pytest.raises(NoticeError):
        parse_gce_preempted(status, body, now=NOW)


@pytest.mark.parametrize(
    "body, kind",
    [
        (b"NONE", None),
        (b"MIGRATE_ON_HOST_MAINTENANCE", None),  # live migration: harmless
        (b"TERMINATE_ON_HOST_MAINTENANCE", NoticeKind.MAINTENANCE),
    ],
)
def test_gce_maintenance_only_terminate_is_a_notice(body, kind):
    notice = parse_gce_maintenance(200, body, now=NOW)
    assert (notice.kind if notice else None) is kind


@pytest.mark.parametrize("status, body", [(200, b"REBOOT"), (200, b"none"), (500, b"NONE")])
def test_gce_maintenance_junk_is_a_notice_error(status, body):
    with pytest.raises(NoticeError):
        parse_gce_maintenance(status, body, now=NOW)


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.__name__)
@pytest.mark.parametrize("body", [None, 42, ["TRUE"], {"action": "terminate"}, object()])
def test_wrong_body_types_are_notice_errors(parser, body):
    with pytest.raises(NoticeError):
        parser(200, body, now=NOW)


# -- fuzzing ---------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)
aws_like = st.fixed_dictionaries(
    {},
    optional={
        "action": json_values | st.sampled_from(["terminate", "stop", "hibernate"]),
        "time": json_values | st.text(max_size=40) | st.datetimes().map(lambda d: d.isoformat()),
        "noticeTime": json_values | st.datetimes().map(lambda d: d.isoformat() + "Z"),
    },
)
bodies = (
    st.binary(max_size=512)
    | json_values.map(lambda v: json.dumps(v).encode())
    | aws_like.map(lambda v: json.dumps(v).encode())
    | st.sampled_from([b"TRUE", b"FALSE", b"NONE", b"TERMINATE_ON_HOST_MAINTENANCE"])
    | st.text(max_size=64).map(str.encode)
)
statuses = st.sampled_from([200, 200, 200, 404, 401, 403, 500, 503]) | st.integers(-1, 1000)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parser=st.sampled_from(PARSERS),
    status=statuses,
    body=bodies,
    now=st.datetimes(timezones=st.just(UTC)) | st.floats(0, 4e9),
)
def test_parsers_raise_only_notice_error(parser, status, body, now):
    try:
        result = parser(status, body, now=now)
    except NoticeError:
        return
    assert result is None or isinstance(result, TerminationNotice)
    if result is not None:
        assert result.kind in set(NoticeKind)
        result.model_dump_json()  # always serialisable into the notice file
