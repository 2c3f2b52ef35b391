"""`aws bootstrap` against a moto server: plan, apply, idempotence, CLI, IAM policy."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from spot_workflows.backends.aws_bootstrap import Bootstrap, BootstrapConfig
from spot_workflows.backends.aws_iam import allows, iam_policy
from spot_workflows.cli_aws import aws
from spot_workflows.errors import ConfigError, NotFoundError


def _boot(moto, boot_config, **kw) -> Bootstrap:
    return Bootstrap(config=boot_config(moto, **kw), endpoint_url=moto.url)


def test_bootstrap_creates_everything_then_the_second_run_is_all_no_ops(moto, boot_config):
    boot = _boot(moto, boot_config)
    planned = boot.plan()
    assert {a.action for a in planned} == {"create"}
    assert moto.client("batch").describe_job_queues()["jobQueues"] == []  # plan changed nothing

    first = boot.apply()
    assert [a.action for a in first] == [a.action for a in planned]
    second = Bootstrap(config=boot.config, endpoint_url=moto.url).apply()
    assert {a.action for a in second} == {"exists"}
    assert len(second) == len(first) == 12

    batch = moto.client("batch")
    envs = {
        e["computeEnvironmentName"]: e
        for e in batch.describe_compute_environments()["computeEnvironments"]
    }
    spot = envs["spot-workflows-spot"]["computeResources"]
    assert spot["type"] == "SPOT"
    assert spot["allocationStrategy"] == "SPOT_PRICE_CAPACITY_OPTIMIZED"
    assert len(spot["instanceTypes"]) >= 5 and all(t.startswith("g") for t in spot["instanceTypes"])
    assert len(spot["subnets"]) == 3  # three zones
    assert envs["spot-workflows-on-demand"]["computeResources"]["type"] == "EC2"
    queues = {q["jobQueueName"]: q for q in batch.describe_job_queues()["jobQueues"]}
    assert set(queues) == {"spot-workflows-spot", "spot-workflows-on-demand"}
    order = queues["spot-workflows-spot"]["computeEnvironmentOrder"]
    assert order[0]["computeEnvironment"].endswith("spot-workflows-spot")

    events = moto.client("events")
    rules = {r["Name"]: r for r in events.list_rules(NamePrefix="spot-workflows")["Rules"]}
    assert set(rules) == {
        "spot-workflows-spot-interruption",
        "spot-workflows-rebalance",
        "spot-workflows-batch-jobs",
    }
    pattern = json.loads(rules["spot-workflows-spot-interruption"]["EventPattern"])
    assert pattern == {
        "source": ["aws.ec2"],
        "detail-type": ["EC2 Spot Instance Interruption Warning"],
    }
    for rule in rules:
        [target] = events.list_targets_by_rule(Rule=rule)["Targets"]
        assert target["Arn"].endswith(":spot-workflows-events")

    sqs = moto.client("sqs")
    url = sqs.get_queue_url(QueueName="spot-workflows-events")["QueueUrl"]
    assert boot.outputs()["events_queue_url"] == url
    policy = json.loads(
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])["Attributes"]["Policy"]
    )
    [statement] = policy["Statement"]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    assert len(statement["Condition"]["ArnEquals"]["aws:SourceArn"]) == 3


def test_bootstrap_repairs_a_drifted_rule_and_a_missing_target(moto, boot_config):
    boot = _boot(moto, boot_config)
    boot.apply()
    events = moto.client("events")
    events.put_rule(Name="spot-workflows-rebalance", EventPattern='{"source": ["aws.ec2"]}')
    events.remove_targets(Rule="spot-workflows-batch-jobs", Ids=["spot-workflows-sqs"])
    changed = [(a.action, a.kind, a.name) for a in boot.apply() if a.action != "exists"]
    assert changed == [
        ("update", "rule", "spot-workflows-rebalance"),
        ("create", "rule-target", "spot-workflows-batch-jobs"),
    ]
    assert {a.action for a in boot.plan()} == {"exists"}


def test_bad_instance_type_is_a_config_error_before_anything_is_created(moto, boot_config):
    boot = _boot(moto, boot_config, instance_types=["g5.xlarge", "g9x.huge"])
    with pytest.raises(ConfigError, match="instance type.*describe-instance-types"):
        boot.plan()
    with pytest.raises(ConfigError, match="g9x.huge"):
        boot.apply()
    assert moto.client("batch").describe_compute_environments()["computeEnvironments"] == []


def test_unknown_subnet_is_reported_by_name(moto, boot_config):
    config = boot_config(moto).model_copy(update={"subnets": ["subnet-0000000000000dead"]})
    with pytest.raises(NotFoundError, match="subnet-0000000000000dead"):
        Bootstrap(config=config, endpoint_url=moto.url).plan()


def test_missing_subnets_say_which_flag_to_pass(moto, boot_config):
    config = BootstrapConfig(region="us-east-1", service_role=boot_config(moto).service_role)
    boot = Bootstrap(config=config, endpoint_url=moto.url)
    assert "needs --subnets" in boot.plan()[0].detail
    with pytest.raises(ConfigError, match="--subnets and --security-groups"):
        boot.apply()


def test_cli_dry_run_prints_the_plan_and_changes_nothing(moto, boot_config):
    config = boot_config(moto)
    args = [
        "bootstrap",
        "--region=us-east-1",
        f"--endpoint-url={moto.url}",
        f"--subnets={','.join(config.subnets)}",
        f"--security-groups={config.security_groups[0]}",
        f"--service-role={config.service_role}",
        "--instance-types=g5.xlarge,g6.xlarge",
        "--name-prefix=team-a",
    ]
    runner = CliRunner()
    dry = runner.invoke(aws, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would create" in dry.output and "team-a-spot" in dry.output
    assert "dry run: 12 change(s) planned, nothing changed" in dry.output
    assert moto.client("batch").describe_compute_environments()["computeEnvironments"] == []

    real = runner.invoke(aws, [*args, "--json"])
    assert real.exit_code == 0, real.output
    doc = json.loads(real.output)
    assert doc["outputs"]["spot_queue"] == "team-a-spot"
    assert {a["action"] for a in doc["actions"]} == {"create"}
    spot = moto.client("batch").describe_compute_environments(computeEnvironments=["team-a-spot"])
    assert spot["computeEnvironments"][0]["computeResources"]["instanceTypes"] == [
        "g5.xlarge",
        "g6.xlarge",
    ]
    again = runner.invoke(aws, args)
    assert again.exit_code == 0 and "nothing to do" in again.output


def test_cli_errors_are_one_line_and_exit_2(moto):
    result = CliRunner().invoke(
        aws,
        [
            "bootstrap",
            "--region=us-east-1",
            f"--endpoint-url={moto.url}",
            "--instance-types=zz.top",
        ],
    )
    assert result.exit_code == 2
    assert result.output.startswith("error: instance type not available")


def test_cli_prints_the_iam_policy_without_calling_aws():
    result = CliRunner().invoke(
        aws,
        [
            "bootstrap",
            "--print-iam-policy",
            "--region=eu-west-1",
            "--account-id=123456789012",
            "--checkpoint-bucket=my-ckpts",
            "--endpoint-url=http://127.0.0.1:9",  # nothing listens there: no call is made
        ],
    )
    assert result.exit_code == 0, result.output
    policy = json.loads(result.output)
    assert policy == iam_policy(
        region="eu-west-1", account="123456789012", checkpoint_bucket="my-ckpts"
    )
    assert allows(policy, "batch:SubmitJob") and allows(policy, "s3:PutObject")
    assert not allows(policy, "batch:CreateComputeEnvironment")
    resources = json.dumps(policy)
    assert "arn:aws:batch:eu-west-1:123456789012:job-queue/spot-workflows-*" in resources


def test_iam_policy_grants_every_call_bootstrap_makes(moto, boot_config):
    boot = _boot(moto, boot_config)
    called: set[str] = set()
    for service in ("batch", "sqs", "events", "ec2"):
        client = boot.client(service)
        client.meta.events.register(
            "before-call",
            lambda model, **_: called.add(f"{model.service_model.signing_name}:{model.name}"),
        )
    boot.apply()
    boot.apply()
    policy = iam_policy(bootstrap=True)
    assert {
        "batch:CreateComputeEnvironment",
        "events:PutTargets",
        "sqs:SetQueueAttributes",
    } <= called
    assert [a for a in sorted(called) if not allows(policy, a)] == []
