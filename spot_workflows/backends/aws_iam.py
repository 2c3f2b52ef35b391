"""The least-privilege IAM policy documents of the package (pure; printed by the CLI).

Run time: submit/describe/terminate/list Batch jobs on the ``<prefix>-*`` queues and job
definitions, look up the ECS container instance a job runs on, consume the ``<prefix>-events``
SQS queue, and (optionally) read/write the checkpoint bucket. ``bootstrap=True`` adds what
``spot-workflows aws bootstrap`` needs. Batch's Describe*/List* actions support no resource-level
permissions, so they are granted on ``*``.
"""

from __future__ import annotations

import re
from typing import Any

from spot_workflows.errors import ConfigError

_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def parse_checkpoint_bucket(value: str) -> tuple[str, str]:
    """``my-ckpts``, ``my-ckpts/runs`` or ``s3://my-ckpts/runs`` -> (bucket, prefix)."""
    rest = value[len("s3://") :] if value.startswith("s3://") else value
    if "://" in rest:
        raise ConfigError(
            f"checkpoint bucket {value!r}: give a bucket name (my-ckpts) or an s3:// URI "
            "(s3://my-ckpts/runs)"
        )
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(
            f"checkpoint bucket {value!r}: {bucket!r} is not an S3 bucket name (up to 63 letters, "
            "digits, '.', '-' or '_', starting with a letter or digit)"
        )
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise ConfigError(f"checkpoint bucket {value!r}: the prefix has an empty, '.' or '..' part")
    if "*" in prefix or "?" in prefix:
        raise ConfigError(f"checkpoint bucket {value!r}: the prefix must not contain * or ?")
    return bucket, prefix


def iam_policy(
    *,
    region: str = "*",
    account: str = "*",
    name_prefix: str = "spot-workflows",
    checkpoint_bucket: str | None = None,
    job_role_arn: str | None = None,
    bootstrap: bool = False,
    partition: str = "aws",
) -> dict:
    """Least-privilege IAM policy for the package (``bootstrap=True`` adds the setup rights)."""
    p = f"arn:{partition}"
    batch = f"{p}:batch:{region}:{account}"
    queue = f"{p}:sqs:{region}:{account}:{name_prefix}-events"
    st: list[dict[str, Any]] = [
        {
            "Sid": "BatchSubmit",
            "Effect": "Allow",
            "Action": ["batch:SubmitJob", "batch:RegisterJobDefinition", "batch:TagResource"],
            "Resource": [
                f"{batch}:job-queue/{name_prefix}-*",
                f"{batch}:job-definition/{name_prefix}-*",
                f"{batch}:job/*",
            ],
        },
        {
            "Sid": "BatchStop",
            "Effect": "Allow",
            "Action": ["batch:TerminateJob", "batch:CancelJob"],
            "Resource": f"{batch}:job/*",
        },
        {
            "Sid": "BatchRead",  # these actions support no resource-level permissions
            "Effect": "Allow",
            "Action": [
                "batch:DescribeJobs",
                "batch:ListJobs",
                "batch:DescribeJobDefinitions",
                "ec2:DescribeSpotPriceHistory",  # report --aws-spot-prices, live_spot_prices
                "ec2:GetSpotPlacementScores",  # the spot_placement_scores setting
            ],
            "Resource": "*",
        },
        {
            "Sid": "JobHosts",
            "Effect": "Allow",
            "Action": ["ecs:DescribeContainerInstances"],
            "Resource": f"{p}:ecs:{region}:{account}:container-instance/*",
        },
        {
            "Sid": "TerminationEvents",
            "Effect": "Allow",
            "Action": [
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:GetQueueUrl",
                "sqs:GetQueueAttributes",
            ],
            "Resource": queue,
        },
    ]
    if checkpoint_bucket:
        bucket, prefix = parse_checkpoint_bucket(checkpoint_bucket)
        objects = f"{bucket}/{prefix}/*" if prefix else f"{bucket}/*"
        st.append(
            {
                "Sid": "Checkpoints",
                "Effect": "Allow",
                "Action": [
                    "s3:GetObject",
                    "s3:PutObject",
                    "s3:DeleteObject",
                    "s3:AbortMultipartUpload",
                    "s3:ListMultipartUploadParts",
                ],
                "Resource": f"{p}:s3:::{objects}",
            }
        )
        listing: dict[str, Any] = {
            "Sid": "CheckpointListing",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": f"{p}:s3:::{bucket}",
        }
        if prefix:
            listing["Condition"] = {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}}
        st.append(listing)
    if job_role_arn:
        st.append(
            {
                "Sid": "PassJobRole",
                "Effect": "Allow",
                "Action": "iam:PassRole",
                "Resource": job_role_arn,
                "Condition": {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}},
            }
        )
    if bootstrap:
        st.extend(_bootstrap_statements(p, region, account, name_prefix, queue))
    return {"Version": "2012-10-17", "Statement": st}


def _bootstrap_statements(p: str, region: str, account: str, prefix: str, queue: str) -> list:
    batch = f"{p}:batch:{region}:{account}"
    return [
        {
            "Sid": "BootstrapBatch",
            "Effect": "Allow",
            "Action": [
                "batch:CreateComputeEnvironment",
                "batch:CreateJobQueue",
                "batch:TagResource",
            ],
            "Resource": [
                f"{batch}:compute-environment/{prefix}-*",
                f"{batch}:job-queue/{prefix}-*",
            ],
        },
        {
            "Sid": "BootstrapRead",  # no resource-level permissions for these
            "Effect": "Allow",
            "Action": [
                "batch:DescribeComputeEnvironments",
                "batch:DescribeJobQueues",
                "ec2:DescribeInstanceTypes",
                "ec2:DescribeSubnets",
                "ec2:DescribeSecurityGroups",
            ],
            "Resource": "*",
        },
        {
            "Sid": "BootstrapEvents",
            "Effect": "Allow",
            "Action": [
                "events:PutRule",
                "events:DescribeRule",
                "events:PutTargets",
                "events:ListTargetsByRule",
            ],
            "Resource": f"{p}:events:{region}:{account}:rule/{prefix}-*",
        },
        {
            "Sid": "BootstrapQueue",
            "Effect": "Allow",
            "Action": [
                "sqs:CreateQueue",
                "sqs:GetQueueUrl",
                "sqs:GetQueueAttributes",
                "sqs:SetQueueAttributes",
            ],
            "Resource": queue,
        },
        {
            "Sid": "BootstrapPassRoles",
            "Effect": "Allow",
            "Action": "iam:PassRole",
            "Resource": "*",
            "Condition": {
                "StringEquals": {
                    "iam:PassedToService": ["batch.amazonaws.com", "ec2.amazonaws.com"]
                }
            },
        },
        {
            "Sid": "BatchServiceLinkedRole",
            "Effect": "Allow",
            "Action": "iam:CreateServiceLinkedRole",
            "Resource": "*",
            "Condition": {"StringEquals": {"iam:AWSServiceName": "batch.amazonaws.com"}},
        },
    ]


# API operations authorized by another action's permission (SQS batch calls).
IAM_ACTION_OF = {
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
}


def allows(policy: dict, action: str) -> bool:
    """Whether any Allow statement of ``policy`` names ``action`` (``service:Op``, globs ok).

    ``action`` may be an API operation (``sqs:DeleteMessageBatch``); it is checked as the IAM
    action that authorizes it. Resources and conditions are not evaluated.
    """
    svc, _, op = IAM_ACTION_OF.get(action, action).lower().partition(":")
    for st in policy.get("Statement", []):
        if st.get("Effect") != "Allow":
            continue
        actions = st.get("Action", [])
        for granted in [actions] if isinstance(actions, str) else actions:
            if granted == "*":
                return True
            g_svc, _, g_op = granted.lower().partition(":")
            if g_svc == svc and (g_op == op or (g_op.endswith("*") and op.startswith(g_op[:-1]))):
                return True
    return False
