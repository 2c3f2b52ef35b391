"""boto3 sessions as :class:`~spot_workflows.backends.settings.AwsSettings` chooses them: an access
key pair or a named profile, optionally assuming an IAM role (boto3 stays in the ``aws_*``
modules)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import boto3
import botocore.session
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError

from spot_workflows.backends.aws_errors import make_client, new_session, translate


def key_session(
    *,
    access_key_id: str | None,
    secret_access_key: str | None,
    session_token: str | None,
    profile_name: str | None,
    region: str | None,
) -> Any:
    """A session on an access key pair or a named profile (else boto3's default chain)."""
    if not (access_key_id or profile_name):
        return new_session()
    try:
        return boto3.session.Session(
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            aws_session_token=session_token,
            profile_name=profile_name,
            region_name=region,
        )
    except BotoCoreError as exc:  # e.g. ProfileNotFound
        raise translate(exc, action="AWS session", region=region) from None


def assume_role_session(base: Any, *, role_arn: str, region: str | None) -> Any:
    """A session on ``role_arn``'s credentials, assumed with ``base``'s (STS ``AssumeRole``) and
    assumed again before they expire."""
    sts = make_client("sts", session=base, region=region)

    def fetch() -> dict[str, str]:
        try:
            got = sts.assume_role(RoleArn=role_arn, RoleSessionName="spot-workflows")
        except (BotoCoreError, ClientError) as exc:
            raise translate(exc, action="sts:AssumeRole", what=f"IAM role {role_arn}") from None
        creds = got["Credentials"]
        expiry = creds["Expiration"]
        if isinstance(expiry, datetime):
            expiry = expiry.astimezone(UTC).isoformat()
        return {
            "access_key": creds["AccessKeyId"],
            "secret_key": creds["SecretAccessKey"],
            "token": creds["SessionToken"],
            "expiry_time": expiry,
        }

    core = botocore.session.get_session()
    core._credentials = RefreshableCredentials.create_from_metadata(  # noqa: SLF001
        metadata=fetch(), refresh_using=fetch, method="sts-assume-role"
    )
    return boto3.session.Session(botocore_session=core, region_name=region)
