"""Hostile input (issue 11, item 5): classifiers, metadata and event parsers, step keys, URIs.

Every parser gets malformed and hostile input (wrong types, deep nesting, huge numbers, odd
unicode, dates at the end of time, NUL bytes) from hypothesis. It must either return a valid
value or raise the package's own error (a ``SpotWorkflowsError`` with a message), never crash
with an arbitrary exception. Step keys and checkpoint URIs that try to leave their prefix are
rejected with a ConfigError / ValueError that says what is allowed.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime

import pytest
from google.cloud import batch_v1
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from spot_workflows.backends.aws_events import (
    DETAIL_TYPES,
    EventConsumer,
    JobEvent,
    MalformedEvent,
    parse_event,
)
from spot_workflows.backends.aws_jobs import observation_from_job
from spot_workflows.backends.gcp_events import parse_notification, preemption_notices
from spot_workflows.backends.gcp_status import (
    _JOB_ID,
    gcp_job_id,
    gcp_label_value,
    observe_job,
)
from spot_workflows.config import StepSpec, validate_checkpoint_uri, validate_step_key
from spot_workflows.core.classify import classify_aws, classify_gcp, classify_local
from spot_workflows.core.outcomes import AttemptState, Observation, TerminationNotice
from spot_workflows.errors import CheckpointError, ConfigError, NoticeError, SpotWorkflowsError
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore, check_name
from spot_workflows.runtime.worker import notice_parsers as np_

EXAMPLES = int(os.environ.get("SPOT_RELIABILITY_EXAMPLES", "200"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
FUZZED: dict[str, int] = {}


def count(name: str) -> None:
    FUZZED[name] = FUZZED.get(name, 0) + 1


# -- hostile values ---------------------------------------------------------------------------

HOSTILE_TEXT = st.one_of(
    st.text(max_size=80),
    st.sampled_from(
        [
            "Host EC2 (instance i-0abc) terminated.",
            "Host EC2 (instance i-\x00) terminated.",
            "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY",
            "Essential container in task exited",
            "due to Spot Preemption with exit code 50001.",
            "with exit code 9" + "9" * 5000,
            "9999-12-31T23:59:59Z",
            "0001-01-01T00:00:00+14:00",
            "2026-01-01T08:22:00Z",
            "\u202e\ufeff\ud7ff" * 20,
            "A" * 70_000,
            "{" * 2000,
            "[" * 5000 + "]" * 5000,
        ]
    ),
)
NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**63), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 75, 143, 50001, 2**31, 10**400, True, False]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, HOSTILE_TEXT, st.binary(max_size=20))
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def shaped(keys: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """Dicts with the keys a parser looks at (valid-ish or junk values), plus junk keys."""
    return st.fixed_dictionaries(
        {}, optional={k: st.one_of(v, JUNK) for k, v in keys.items()}
    ).flatmap(lambda d: st.dictionaries(st.text(max_size=8), JUNK, max_size=2).map(d.__or__))


CONTAINER = shaped(
    {"exitCode": NUMBERS, "reason": HOSTILE_TEXT, "environment": st.lists(JUNK, max_size=3)}
)
AWS_JOB = shaped(
    {
        "jobId": HOSTILE_TEXT,
        "status": st.sampled_from(["FAILED", "SUCCEEDED", "RUNNING", "RUNNABLE", "??"]),
        "statusReason": HOSTILE_TEXT,
        "container": CONTAINER,
        "attempts": st.lists(
            shaped({"container": CONTAINER, "statusReason": HOSTILE_TEXT, "startedAt": NUMBERS}),
            max_size=3,
        ),
        "startedAt": NUMBERS,
        "stoppedAt": NUMBERS,
        "tags": JUNK,
        "jobName": HOSTILE_TEXT,
    }
)


# -- classifiers --------------------------------------------------------------------------------


@SETTINGS
@given(
    status=st.one_of(HOSTILE_TEXT, st.none()),
    reason=st.one_of(HOSTILE_TEXT, st.none()),
    code=st.one_of(st.none(), st.integers()),
    seen=st.booleans(),
)
def test_classify_aws_total(status, reason, code, seen):
    count("classify_aws")
    state, outcome = classify_aws(status, reason, code, notice_seen=seen)
    assert (state is AttemptState.DONE) == (outcome is not None)


@SETTINGS
@given(
    state=st.one_of(HOSTILE_TEXT, st.none()),
    code=st.one_of(st.none(), st.integers()),
    events=st.lists(st.one_of(HOSTILE_TEXT, st.none()), max_size=4),
)
def test_classify_gcp_total(state, code, events):
    count("classify_gcp")
    st_, outcome = classify_gcp(state, code, events)
    assert (st_ is AttemptState.DONE) == (outcome is not None)


@SETTINGS
@given(code=st.one_of(st.none(), st.integers()), r=st.booleans(), c=st.booleans())
def test_classify_local_total(code, r, c):
    count("classify_local")
    assert classify_local(code, reclaimed=r, cancelled=c) is not None


@SETTINGS
@given(job=st.one_of(AWS_JOB, JUNK), seen=st.booleans())
def test_aws_describe_jobs_parsing_never_crashes(job, seen):
    count("aws observation_from_job")
    try:
        obs = observation_from_job(job, notice_seen=seen)
    except SpotWorkflowsError as exc:
        assert str(exc)
        return
    assert isinstance(obs, Observation)


def gcp_job(state: str, events: list[tuple[str, int, int | None]]) -> batch_v1.Job:
    job = batch_v1.Job(name="projects/p/locations/r/jobs/j", uid="u")
    job.status.state = batch_v1.JobStatus.State[state]
    for text, code, when in events:
        ev = batch_v1.StatusEvent(description=text)
        if code:
            ev.task_execution = batch_v1.TaskExecution(exit_code=code)
        if when is not None:
            ev.event_time = datetime.fromtimestamp(when, tz=UTC)
        job.status.status_events.append(ev)
    return job


@SETTINGS
@given(
    state=st.sampled_from(list(batch_v1.JobStatus.State.__members__)),
    events=st.lists(
        st.tuples(
            HOSTILE_TEXT.filter(lambda s: "\x00" not in s and "\ud7ff" not in s or True),
            st.integers(-(2**31), 2**31 - 1),
            st.one_of(st.none(), st.integers(0, 2**33)),
        ),
        max_size=4,
    ),
)
def test_gcp_job_parsing_never_crashes(state, events):
    count("gcp observe_job + preemption_notices")
    try:
        job = gcp_job(state, events)
    except (ValueError, TypeError, OverflowError):
        return  # proto-plus refused the value: it could never come from the API
    try:
        obs = observe_job(job)
        notices = preemption_notices(job, now=0.0)
    except SpotWorkflowsError as exc:
        assert str(exc)
        return
    assert isinstance(obs, Observation)
    assert all(isinstance(n, TerminationNotice) for n in notices)


@SETTINGS
@given(name=st.text(max_size=300))
def test_gcp_ids_and_labels_are_always_valid(name):
    count("gcp_job_id / gcp_label_value")
    assert _JOB_ID.fullmatch(gcp_job_id(name))
    label = gcp_label_value(name)
    assert len(label) <= 63 and all(c in "abcdefghijklmnopqrstuvwxyz0123456789_-" for c in label)


# -- metadata and event parsers -----------------------------------------------------------------

BODIES = st.one_of(
    st.binary(max_size=200),
    HOSTILE_TEXT.map(lambda s: s.encode("utf-8", "surrogatepass")),
    shaped({"action": HOSTILE_TEXT, "time": HOSTILE_TEXT, "noticeTime": HOSTILE_TEXT}).map(
        lambda d: json.dumps(d, default=repr).encode()
    ),
    st.sampled_from([b"TRUE", b"FALSE", b"TERMINATE_ON_HOST_MAINTENANCE", b"", b"\x00", b"[]"]),
    st.just(b"[" * 100_000 + b"]" * 100_000),
)
PARSERS = [
    np_.parse_aws_instance_action,
    np_.parse_aws_rebalance,
    np_.parse_gce_preempted,
    np_.parse_gce_maintenance,
]


@SETTINGS
@given(
    parser=st.sampled_from(PARSERS),
    status=st.one_of(st.sampled_from([200, 404, 401, 500]), st.integers()),
    body=st.one_of(BODIES, JUNK),
    now=st.one_of(
        st.floats(0, 4e9),
        st.datetimes(timezones=st.just(UTC)),
        st.sampled_from([1e20, -1e20, float("nan")]),
    ),
)
def test_metadata_parsers_return_a_notice_none_or_notice_error(parser, status, body, now):
    count("notice parsers (IMDS, GCE)")
    try:
        got = parser(status, body, now=now)
    except NoticeError as exc:
        assert str(exc)
        return
    assert got is None or isinstance(got, TerminationNotice)


EVENT = shaped(
    {
        "detail-type": st.sampled_from(list(DETAIL_TYPES)),
        "detail": st.one_of(
            AWS_JOB,
            shaped(
                {"instance-id": st.sampled_from(["i-0abc", "i-", "x"]), "instance-action": JUNK}
            ),
        ),
        "time": HOSTILE_TEXT,
        "source": st.sampled_from(["aws.ec2", "aws.batch"]),
    }
)


@SETTINGS
@given(envelope=st.one_of(EVENT, JUNK), noticed=st.lists(HOSTILE_TEXT, max_size=2))
def test_eventbridge_events_parse_or_raise_malformed_event(envelope, noticed):
    count("EventBridge parse_event")
    try:
        event = parse_event(envelope, noticed_jobs=noticed)
    except MalformedEvent as exc:
        assert isinstance(exc, SpotWorkflowsError) and str(exc)
        return
    assert isinstance(event, TerminationNotice | JobEvent)


@SETTINGS
@given(envelopes=st.lists(st.one_of(EVENT, JUNK), min_size=1, max_size=5))
def test_the_sqs_consumer_survives_poison_messages(envelopes):
    """One hostile message must not stop the consumer: it is dropped and counted (poll() then
    deletes every message it saw, parsed or not)."""
    count("SQS EventConsumer messages")
    bodies = [json.dumps(e, default=repr) for e in envelopes]
    bodies += ["{not json", "\x00" * 10]  # deep JSON: test_known_poison_messages_...
    consumer = EventConsumer(sqs_client=object(), queue_url="https://sqs/q")
    for i, body in enumerate(bodies):
        msg = {"MessageId": str(i), "ReceiptHandle": f"r{i}", "Body": body}
        msg["Attributes"] = {"SentTimestamp": "9" * 30 if i % 2 else "x"}
        event = consumer._parse(msg)
        assert event is None or isinstance(event, TerminationNotice | JobEvent)
    assert consumer.stats.parsed + consumer.stats.malformed == len(bodies)


@pytest.mark.parametrize(
    "body",
    [
        {
            "detail-type": "Batch Job State Change",
            "detail": {"jobId": "j", "status": "FAILED", "container": "x"},
        },
        {
            "detail-type": "Batch Job State Change",
            "detail": {"jobId": "j", "status": "FAILED", "attempts": 5},
        },
        {
            "detail-type": "Batch Job State Change",
            "detail": {"jobId": "j", "status": "FAILED", "startedAt": 10**400},
        },
        {
            "detail-type": "EC2 Spot Instance Interruption Warning",
            "time": "9999-12-31T23:59:59Z",
            "detail": {"instance-id": "i-0abc", "instance-action": "terminate"},
        },
        "[" * 100_000 + "]" * 100_000,
    ],
    ids=["container-not-object", "attempts-not-list", "huge-time", "end-of-time", "deep-json"],
)
def test_known_poison_messages_are_dropped_not_fatal(body):
    """Each of these crashed the consumer (AttributeError, TypeError, OverflowError,
    RecursionError escaped poll(), so the message was redelivered forever)."""
    consumer = EventConsumer(sqs_client=object(), queue_url="https://sqs/q")
    text = body if isinstance(body, str) else json.dumps(body)
    assert consumer._parse({"MessageId": "m", "Body": text}) is None or body != text
    assert consumer.stats.malformed + consumer.stats.parsed == 1


@SETTINGS
@given(
    message=st.one_of(
        JUNK,
        shaped(
            {
                "attributes": shaped(
                    {
                        "Type": st.sampled_from(["JOB_STATE_CHANGED", "TASK_STATE_CHANGED"]),
                        "NewJobState": HOSTILE_TEXT,
                        "NewTaskState": HOSTILE_TEXT,
                        "JobName": HOSTILE_TEXT,
                        "ExitCode": HOSTILE_TEXT,
                    }
                ),
                "data": st.one_of(
                    HOSTILE_TEXT, st.binary().map(lambda b: base64.b64encode(b).decode())
                ),
            }
        ),
    )
)
def test_gcp_pubsub_notifications_parse_or_are_skipped(message):
    count("GCP Pub/Sub parse_notification")
    n = parse_notification(message)
    if n is not None:
        n.observation()
        n.notice(now=0.0)


# -- step keys, checkpoint URIs, object names: no escape ------------------------------------

ESCAPING_KEYS = [
    "..",
    "../x",
    "a/../../b",
    "/etc",
    "/",
    "a/b",
    "a\\b",
    "..\\..\\x",
    "a\x00b",
    "a\nb",
    "step\n",
    "%2e%2e",
    "a%2fb",
    "C:\\x",
    "~root",
    "",
    " ",
    "-x",
    ".hidden",
    "a..b",
    "é",
    "x" * 201,
]


@pytest.mark.parametrize("key", ESCAPING_KEYS)
def test_escaping_step_keys_are_rejected(key):
    count("escaping step keys")
    with pytest.raises(ValueError, match="step key"):
        validate_step_key(key)
    with pytest.raises(ValidationError, match="step key"):
        StepSpec(key=key, command=["true"], checkpoint_uri="file:///tmp/ckpt/x")


@SETTINGS
@given(key=st.text(max_size=220))
def test_accepted_step_keys_are_one_safe_segment(key):
    count("step keys (random)")
    try:
        validate_step_key(key)
    except ValueError:
        return
    assert "/" not in key and "\\" not in key and ".." not in key and key.isascii()
    assert key.isprintable() and key[0].isalnum() and len(key) <= 200


ESCAPING_URIS = [
    "file://",
    "file:///",
    "file://relative/dir",
    "file:///tmp/../etc",
    "file:///tmp/ckpt/..",
    "file:///tmp/./ckpt",
    "file:///tmp/%2e%2e/etc",
    "file:///tmp/%2E%2E%2Fetc",
    "s3://bucket/a%2f..%2fb",
    "file:///tmp/ckpt\x00/x",
    "file:///tmp/ckpt\n",
    "file:///tmp\\..\\etc",
    "s3://",
    "s3:///bucket/x",
    "s3://bucket/../other-bucket",
    "s3://../x",
    "gs://",
    "gs://b/x/../../y",
    "http://evil.example/ckpt",
    "ftp://h/x",
    "hdfs://nn/x",
    "S3://bucket/x",
    "file:/tmp/x",
    "/tmp/ckpt",
    "tmp/ckpt",
    "~/ckpt",
    " s3://bucket/x",
    "zip://x::file:///tmp/a.zip",
    "simplecache::s3://bucket/x",
    "memory://../x",
    "",
]


@pytest.mark.parametrize("uri", ESCAPING_URIS)
def test_escaping_checkpoint_uris_are_rejected(uri):
    count("escaping checkpoint URIs")
    with pytest.raises(ValueError, match="checkpoint URI"):
        validate_checkpoint_uri(uri)
    with pytest.raises(ConfigError, match="checkpoint URI"):
        CheckpointStore(uri)


@pytest.mark.parametrize(
    "uri", ["file:///tmp/ckpt/step-1", "s3://bucket/ckpt/a=b_c-1.x", "gs://b/x/", "memory://t/x"]
)
def test_ordinary_checkpoint_uris_are_accepted(uri):
    assert validate_checkpoint_uri(uri) == uri.rstrip("/")


@SETTINGS
@given(
    scheme=st.sampled_from(["file:///", "s3://", "gs://", "memory://"]),
    segments=st.lists(
        st.one_of(st.sampled_from(["..", ".", "", "%2e%2e", "a\\..", "\x00"]), st.text(max_size=6)),
        min_size=1,
        max_size=5,
    ),
)
def test_accepted_uris_never_hold_escape_sequences(scheme, segments):
    count("checkpoint URIs (random)")
    uri = scheme + "/".join(segments)
    try:
        validate_checkpoint_uri(uri)
    except ValueError as exc:
        assert "checkpoint URI" in str(exc)
        return
    path = uri.split("://", 1)[1]
    assert ".." not in path.split("/") and "\\" not in uri and "\x00" not in uri
    assert "%2e" not in uri.lower() and path.strip("/")


ESCAPING_NAMES = ["../x", "/abs", "a/../../b", "a\\b", "a\x00", "", ".", "a//b", "C:x", "a/."]


@pytest.mark.parametrize("name", ESCAPING_NAMES)
def test_escaping_object_names_are_rejected_by_the_store(name, tmp_path):
    count("escaping object names")
    store = CheckpointStore(f"file://{tmp_path}/ckpt")
    with pytest.raises(ConfigError, match="not allowed"):
        store.save(1, {name: b"x"})
    with pytest.raises(ConfigError, match="not allowed"):
        store.write_atomic(name, b"x")
    with pytest.raises(ConfigError, match="not allowed"):
        check_name(name)
    assert not any(p for p in tmp_path.rglob("*") if p.is_file())


@settings(SETTINGS, max_examples=max(1, EXAMPLES // 2))  # each example saves on disk
@given(name=st.text(min_size=1, max_size=30))
def test_saved_names_stay_inside_the_prefix(name, tmp_path_factory):
    """Any name the store accepts (``%2e%2e`` is literal) lands under the checkpoint prefix."""
    count("object names (random, saved on disk)")
    root = tmp_path_factory.mktemp("names")
    store = CheckpointStore(f"file://{root}/inside")
    try:
        store.save(1, {name: b"x"})
    except (ConfigError, CheckpointError):
        return  # refused, or a name the OS refuses (too long a segment): nothing escaped
    outside = [p for p in root.rglob("*") if p.is_file() and "inside" not in p.parts]
    assert outside == []


def test_report_counts():
    print(f"\nhostile inputs: {FUZZED}; total {sum(FUZZED.values())}")
