"""``spot-workflows aws ...``: set up AWS Batch for spot steps (needs the ``aws`` extra)."""

from __future__ import annotations

import json
import re

import click
from pydantic import ValidationError

from spot_workflows.cli_errors import fail as _fail
from spot_workflows.errors import ConfigError, SpotWorkflowsError, config_error

_ACCOUNT = re.compile(r"^\d{12}$")
_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,40}$")


def _split(values: tuple[str, ...]) -> list[str]:
    """``--subnets a,b --subnets c`` -> [a, b, c]."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


@click.group("aws")
def aws() -> None:
    """AWS Batch: bootstrap queues, compute environments and termination events."""


@aws.command("bootstrap")
@click.option("--region", envvar="AWS_DEFAULT_REGION", help="AWS region (or AWS_DEFAULT_REGION).")
@click.option("--subnets", multiple=True, help="Subnet ids, comma-separated; use several zones.")
@click.option("--security-groups", multiple=True, help="Security group ids, comma-separated.")
@click.option(
    "--instance-types",
    multiple=True,
    help="EC2 instance types, comma-separated (default: a diversified single-GPU list).",
)
@click.option("--name-prefix", default="spot-workflows", show_default=True)
@click.option(
    "--instance-role",
    default="ecsInstanceRole",
    show_default=True,
    help="Existing ECS instance profile (name or ARN).",
)
@click.option("--service-role", help="Batch service role ARN (default: the service-linked role).")
@click.option("--max-vcpus", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--endpoint-url", help="Send every AWS call here (tests, LocalStack, moto).")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--print-iam-policy", is_flag=True, help="Print the IAM policy JSON and exit.")
@click.option(
    "--iam-scope",
    type=click.Choice(["runtime", "bootstrap"]),
    default="runtime",
    show_default=True,
    help="With --print-iam-policy: run-time rights only, or those plus bootstrap's.",
)
@click.option(
    "--checkpoint-bucket",
    help="With --print-iam-policy: grant this S3 bucket (my-ckpts, or s3://my-ckpts/prefix).",
)
@click.option(
    "--account-id",
    default="*",
    help="With --print-iam-policy: scope ARNs to this 12-digit account id (default: any).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def bootstrap(
    region: str | None,
    subnets: tuple[str, ...],
    security_groups: tuple[str, ...],
    instance_types: tuple[str, ...],
    name_prefix: str,
    instance_role: str,
    service_role: str | None,
    max_vcpus: int,
    endpoint_url: str | None,
    dry_run: bool,
    print_iam_policy: bool,
    iam_scope: str,
    checkpoint_bucket: str | None,
    account_id: str,
    as_json: bool,
) -> None:
    """Create (idempotently) the spot and on-demand compute environments and job queues, and
    the EventBridge rules -> SQS queue for termination events."""
    try:
        from spot_workflows.backends.aws_bootstrap import Bootstrap, BootstrapConfig
        from spot_workflows.backends.aws_iam import iam_policy
    except ImportError as exc:  # boto3 missing
        _fail(f"{exc}; install the AWS extra: pip install 'spot-workflows[aws]'")
    if not _PREFIX.fullmatch(name_prefix):
        _fail(
            f"--name-prefix {name_prefix!r} must be 1-41 letters, digits, '_' or '-', starting "
            "with a letter or digit"
        )
    if print_iam_policy:
        if account_id != "*" and not _ACCOUNT.fullmatch(account_id):
            _fail(f"--account-id {account_id!r} must be a 12-digit AWS account id (or * for any)")
        try:
            policy = iam_policy(
                region=region or "*",
                account=account_id,
                name_prefix=name_prefix,
                checkpoint_bucket=checkpoint_bucket,
                bootstrap=iam_scope == "bootstrap",
            )
        except ConfigError as exc:
            _fail(f"--checkpoint-bucket: {exc}")
        click.echo(json.dumps(policy, indent=2))
        return
    if not region:
        _fail("no AWS region: pass --region or set AWS_DEFAULT_REGION")
    try:
        extra = {"instance_types": _split(instance_types)} if instance_types else {}
        config = BootstrapConfig(
            region=region,
            subnets=_split(subnets),
            security_groups=_split(security_groups),
            name_prefix=name_prefix,
            instance_role=instance_role,
            service_role=service_role,
            max_vcpus=max_vcpus,
            **extra,
        )
    except ValidationError as exc:
        _fail(str(config_error(exc, "bootstrap settings")))
    except ValueError as exc:
        _fail(str(exc))
    try:
        boot = Bootstrap(config=config, endpoint_url=endpoint_url)
        actions = boot.plan() if dry_run else boot.apply()
        outputs = boot.outputs()
    except SpotWorkflowsError as exc:  # 2: a setting to fix; 1: AWS refused or failed
        _fail(str(exc), 2 if isinstance(exc, ConfigError) else 1)
    if as_json:
        rows = [a.__dict__ for a in actions]
        click.echo(json.dumps({"dry_run": dry_run, "actions": rows, "outputs": outputs}, indent=2))
        return
    for a in actions:
        verb = f"would {a.action}" if dry_run and a.action != "exists" else a.action
        click.echo(f"{verb:>14}  {a.kind:<20} {a.name}" + (f"  ({a.detail})" if a.detail else ""))
    changes = sum(a.action != "exists" for a in actions)
    if dry_run:
        click.echo(f"dry run: {changes} change(s) planned, nothing changed")
    else:
        click.echo(f"{changes} change(s) made" if changes else "nothing to do: all resources exist")
        click.echo(
            f"spot queue: {outputs['spot_queue']}  on-demand queue: {outputs['on_demand_queue']}  "
            f"events queue: {outputs['events_queue_url']}"
        )
