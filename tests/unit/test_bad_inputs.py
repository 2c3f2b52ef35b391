"""Bad inputs a new user tries: each is refused when the object is built, with one line that
names the field and what it accepts; nothing is submitted or written."""

from __future__ import annotations

import json
import math
import re

import pytest
from moto_lab import REGION, moto_server
from pydantic import ValidationError

from spot_workflows.backends.aws_batch import AwsBatchBackend
from spot_workflows.backends.aws_iam import iam_policy, parse_checkpoint_bucket
from spot_workflows.backends.aws_jobs import job_definition
from spot_workflows.config import InvalidConfigError, SpotPolicy, StepSpec
from spot_workflows.errors import ConfigError, SpotWorkflowsError
from spot_workflows.ledger import LEDGER_PATH, LedgerDoc
from spot_workflows.pricing import load_catalog
from spot_workflows.report import run_report
from spot_workflows.runner import StepRunner
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore
from spot_workflows.sim import Cell, trace_from_data
from spot_workflows.sim.engine import simulate

BASE_STEP = {"key": "train", "command": ["python", "t.py"], "checkpoint_uri": "file:///tmp/c/k"}

# (field, bad value, words the message must carry: the accepted range or rule)
STEP_CASES = [
    ("timeout_s", math.inf, "finite number > 0 and <= 31536000"),
    ("timeout_s", math.nan, "finite number > 0 and <= 31536000"),
    ("timeout_s", 1e12, "<= 31536000"),
    ("timeout_s", 0, "> 0"),
    ("vcpus", math.inf, "finite number > 0"),
    ("vcpus", 0, "finite number > 0"),
    ("vcpus", True, "not a boolean"),
    ("memory_mib", 0, "integer > 0"),
    ("memory_mib", True, "not a boolean"),
    ("gpus", -1, "integer >= 0"),
    ("gpus", True, "not a boolean"),
    ("gpus", 1.5, "integer >= 0"),
    ("env", {"": "x"}, "letters, digits and '_', not starting with a digit"),
    ("env", {"A=B": "x"}, "letters, digits and '_', not starting with a digit"),
    ("env", {"A\x00": "x"}, "letters, digits and '_', not starting with a digit"),
    ("env", {"1X": "x"}, "letters, digits and '_', not starting with a digit"),
    ("env", {"A": "x\x00y"}, "NUL"),
    ("env", {"SPOT_X": "x"}, "reserved"),
    ("command", [], "non-empty list"),
    ("command", [""], "must not be empty"),
    ("command", ["a", "b\x00"], "NUL"),
    ("notice_source", "azure", "aws, gcp, local, auto"),
    ("instance_types", [""], "non-empty name without spaces"),
    ("instance_types", ["g5.xlarge, g6.xlarge"], "non-empty name without spaces"),
]

POLICY_CASES = [
    ("strategy", "bogus", "choose one of: auto, attempts, deadline, greedy, uniform_progress"),
    ("capacity_timeout_s", math.nan, "finite number > 0 and <= 604800"),
    ("capacity_timeout_s", math.inf, "finite number > 0 and <= 604800"),
    ("on_demand_capacity_timeout_s", math.inf, "finite number > 0, or None"),
    ("deadline_s", math.inf, "finite number > 0, or None"),
    ("deadline_s", "inf", "finite number > 0, or None"),
    ("deadline_s", False, "not a boolean"),
    ("budget_usd", math.inf, "finite number > 0, or None"),
    ("budget_usd", -1, "finite number > 0, or None"),
    ("work_s", math.nan, "finite number > 0, or None"),
    ("restart_overhead_s", math.inf, "finite number >= 0, or None"),
    ("restore_s", math.nan, "finite number >= 0"),
    ("spot_usd_per_hour", math.inf, "finite number > 0"),
    ("on_demand_usd_per_hour", 0, "finite number > 0"),
    ("preemption_budget", True, "integer >= 0 and <= 100"),
    ("preemption_budget", -1, "integer >= 0 and <= 100"),
    ("preemption_budget", 101, "integer >= 0 and <= 100"),
    ("app_error_retries", True, "integer >= 0 and <= 20"),
    ("infra_error_retries", 2.5, "integer >= 0 and <= 20"),
    ("max_attempts", 0, "integer >= 1 and <= 200"),
    ("max_attempts", False, "integer >= 1 and <= 200"),
    ("start_on", "SOMETIMES", "SPOT or ON_DEMAND"),
]


def _ids(cases):
    return [f"{field}={value!r}"[:40] for field, value, _ in cases]


def assert_one_line(exc: BaseException, field: str, says: str) -> None:
    text = str(exc)
    assert "\n" not in text, text
    assert field in text and says in text, text


@pytest.mark.parametrize(("field", "value", "says"), STEP_CASES, ids=_ids(STEP_CASES))
def test_a_bad_step_field_is_refused_at_construction(field, value, says):
    with pytest.raises(ConfigError) as err:
        StepSpec(**{**BASE_STEP, field: value})
    assert_one_line(err.value, field, says)
    assert str(err.value).startswith("invalid step: ")
    assert isinstance(err.value, ValidationError)  # code catching pydantic's error still works


@pytest.mark.parametrize(("field", "value", "says"), POLICY_CASES, ids=_ids(POLICY_CASES))
def test_a_bad_policy_field_is_refused_at_construction(field, value, says):
    with pytest.raises(ConfigError) as err:
        SpotPolicy(**{field: value})
    assert_one_line(err.value, field, says)
    with pytest.raises(ConfigError) as again:  # the same through model_validate (Airflow, Prefect)
        SpotPolicy.model_validate({field: value})
    assert str(again.value) == str(err.value)


def test_the_fields_errors_keep_their_ranges_for_other_formatters():
    with pytest.raises(InvalidConfigError) as err:
        SpotPolicy(preemption_budget=-1, deadline_s=math.inf)
    fields = {e["loc"][0]: e["msg"] for e in err.value.errors()}
    assert "integer >= 0 and <= 100" in fields["preemption_budget"]
    assert "finite number > 0, or None" in fields["deadline_s"]
    assert err.value.error_count() == 2


@pytest.mark.parametrize(
    "good",
    [
        {"preemption_budget": 0, "deadline_s": None, "budget_usd": None},
        {"strategy": "greedy", "deadline_s": 3600.0, "preemption_budget": "3"},
        {"restart_overhead_s": 0, "restore_s": 0},
    ],
)
def test_good_policies_still_build(good):
    SpotPolicy(**good)


def test_good_steps_still_build():
    spec = StepSpec(**BASE_STEP, env={"WANDB_MODE": "offline", "_X1": ""}, vcpus=0.5, timeout_s=60)
    assert spec.vcpus == 0.5  # GCP and the local backend take fractions; AWS refuses at submit


@pytest.mark.parametrize(
    ("field", "value"), [("vcpus", 0.5), ("memory_mib", 2)], ids=["vcpus=0.5", "memory_mib=2"]
)
def test_aws_refuses_what_ec2_batch_cannot_run_before_any_call(field, value):
    spec = StepSpec(**{**BASE_STEP, "image": "img:1", field: value})
    with pytest.raises(ConfigError) as err:
        job_definition(spec)
    assert_one_line(err.value, field, "vcpus >= 1 and memory_mib >= 4")


def _run_half_a_vcpu_on_aws(tmp_path) -> tuple[ConfigError, list, bytes | None]:
    """The real runner and AWS backend against a moto server, for a step with vcpus=0.5."""
    spec = StepSpec(
        key="half-cpu",
        command=["python", "t.py"],
        image="img:1",
        checkpoint_uri=f"file://{tmp_path / 'ckpt'}",
        vcpus=0.5,
    )
    with moto_server() as moto:
        backend = AwsBatchBackend(
            spot_queue="q-spot",
            on_demand_queue="q-od",
            region=REGION,
            endpoint_url=moto.url,
            sleep=lambda s: None,
        )
        runner = StepRunner(spec=spec, backend=backend, poll_interval=0, sleep=lambda s: None)
        with pytest.raises(ConfigError, match="vcpus >= 1") as err:
            runner.run()
        # a submit registers the job definition first: none means Batch saw nothing
        definitions = moto.client("batch").describe_job_definitions()["jobDefinitions"]
    return err.value, definitions, CheckpointStore(spec.checkpoint_uri).read(LEDGER_PATH)


def test_an_aws_step_with_half_a_vcpu_submits_nothing(tmp_path):
    error, definitions, _ = _run_half_a_vcpu_on_aws(tmp_path)
    assert definitions == []
    assert "\n" not in str(error)


def test_an_aws_step_with_half_a_vcpu_writes_no_attempt(tmp_path):
    _, _, ledger = _run_half_a_vcpu_on_aws(tmp_path)
    assert ledger is None or json.loads(ledger)["attempts"] == []


# -- AWS IAM policy: the checkpoint bucket ---------------------------------------------------


@pytest.mark.parametrize(
    ("given", "objects", "listing_prefix"),
    [
        ("my-ckpts", "arn:aws:s3:::my-ckpts/*", None),
        ("s3://my-ckpts", "arn:aws:s3:::my-ckpts/*", None),
        ("s3://my-ckpts/runs/", "arn:aws:s3:::my-ckpts/runs/*", "runs"),
        ("my-ckpts/runs/a", "arn:aws:s3:::my-ckpts/runs/a/*", "runs/a"),
    ],
)
def test_the_checkpoint_bucket_may_be_a_name_or_an_s3_uri(given, objects, listing_prefix):
    st = {s["Sid"]: s for s in iam_policy(checkpoint_bucket=given)["Statement"]}
    assert st["Checkpoints"]["Resource"] == objects
    assert st["CheckpointListing"]["Resource"] == "arn:aws:s3:::my-ckpts"
    cond = st["CheckpointListing"].get("Condition")
    if listing_prefix is None:
        assert cond is None
    else:
        assert cond == {"StringLike": {"s3:prefix": [listing_prefix, f"{listing_prefix}/*"]}}


@pytest.mark.parametrize(
    "bad", ["s3://", "gs://b/p", "bad bucket", "s3://b/../x", "b/p/*", "-b"], ids=str
)
def test_a_bad_checkpoint_bucket_is_one_line(bad):
    with pytest.raises(ConfigError) as err:
        parse_checkpoint_bucket(bad)
    assert "\n" not in str(err.value) and "checkpoint bucket" in str(err.value)


# -- the simulator ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "says"),
    [("notalist", "data must be a list"), ([1, "x", None], "data[1]"), ([1, math.nan], "data[1]")],
    ids=["string", "mixed", "nan"],
)
def test_a_bad_trace_is_a_config_error(data, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        trace_from_data("t", 600, data)


@pytest.mark.parametrize("gap", [0, math.inf, math.nan])
def test_a_bad_trace_gap_is_a_config_error(gap):
    with pytest.raises(ConfigError, match="gap_seconds must be a finite number > 0"):
        trace_from_data("t", gap, [1, 0])


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"work_hours": math.nan}, "work_hours"),
        ({"deadline_hours": math.inf}, "deadline_hours"),
        ({"restart_hours": -1}, "restart_hours"),
        ({"starts": 0}, "starts"),
        ({"starts": True}, "starts"),
    ],
    ids=lambda v: str(v),
)
def test_a_bad_simulation_cell_is_a_config_error(kw, field):
    args = {"work_hours": 1.0, "deadline_hours": 2.0, "restart_hours": 0.0, "starts": 1, **kw}
    with pytest.raises(ConfigError, match=f"Cell.{field} must be"):
        Cell(**args)


def test_the_engine_refuses_non_finite_work():
    trace = trace_from_data("t", 600, [1] * 50)
    with pytest.raises(ConfigError, match="work_s must be a finite number > 0"):
        simulate(trace, 0, SpotPolicy(deadline_s=3600.0), work_s=math.inf, restart_overhead_s=0)


# -- report: stray entries under a prefix ----------------------------------------------------


def test_report_skips_a_stray_file_under_a_prefix_and_says_so(tmp_path):
    step = tmp_path / "step-a"
    step.mkdir()
    (step / LEDGER_PATH).write_text(LedgerDoc(step_key="step-a").model_dump_json())
    (tmp_path / "notes.txt").write_text("not a step")
    rep = run_report([f"file://{tmp_path}"], load_catalog(None))
    assert [s.step_key for s in rep.steps] == ["step-a"]
    assert len(rep.skipped) == 1 and "notes.txt: not a directory" in rep.skipped[0]
    assert CheckpointStore(f"file://{step}").read(LEDGER_PATH) is not None


def test_every_error_here_is_a_spot_workflows_error():
    assert issubclass(InvalidConfigError, SpotWorkflowsError)
    assert issubclass(InvalidConfigError, ValueError)


def test_the_error_pickles_as_itself():
    """Prefect and Airflow pickle a task's exception: it must come back the same one line."""
    import pickle

    with pytest.raises(InvalidConfigError) as err:
        StepSpec(**{**BASE_STEP, "timeout_s": math.inf})
    back = pickle.loads(pickle.dumps(err.value))
    assert isinstance(back, InvalidConfigError) and str(back) == str(err.value)
    assert back.errors() == err.value.errors()
