"""A checkpoint store on s3:// (s3fs against a moto server) without usable credentials: a
CredentialsError that says how to provide them, raised at once (never retried as a "transient
storage error"), and no secret in the message."""

from __future__ import annotations

import logging

import pytest

from spot_workflows.errors import CheckpointError, CredentialsError
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore
from spot_workflows.runtime.store.retry import RetryPolicy

SECRET = "wJalrXUtnFEMI-not-a-real-secret-K7MDENG"


class Counted:
    """Counts the calls of some of a filesystem's methods (the tries of each operation)."""

    def __init__(self, fs, names: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: dict[str, int] = dict.fromkeys(names, 0)
        for name in names:
            original = getattr(fs, name)

            def counted(*args, _name=name, _original=original, **kw):
                self.calls[_name] += 1
                return _original(*args, **kw)

            monkeypatch.setattr(fs, name, counted)


def store_with(moto, sleeps: list[float], **options) -> CheckpointStore:
    return CheckpointStore(
        "s3://ckpt/run-1",
        storage_options={**moto.s3_options, **options},
        retry=RetryPolicy(attempts=5, base_s=0.2, max_s=2.0, sleep=sleeps.append),
    )


def operations(store: CheckpointStore) -> dict:
    return {
        "save": lambda: store.save(1, {"model.bin": b"weights"}),
        "write_atomic": lambda: store.write_atomic("ledger.json", b"{}"),
        "read": lambda: store.read("ledger.json"),
        "latest": store.latest,
    }


@pytest.mark.parametrize("op", ["save", "write_atomic", "read", "latest"])
def test_missing_credentials_raise_credentials_error_at_once(moto, monkeypatch, caplog, op):
    moto.client("s3").create_bucket(Bucket="ckpt")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    sleeps: list[float] = []
    store = store_with(moto, sleeps)
    counted = Counted(store.fs, ("ls", "pipe_file", "cat_file"), monkeypatch)
    with (
        caplog.at_level(logging.WARNING, "spot_workflows"),
        pytest.raises(CredentialsError) as err,
    ):
        operations(store)[op]()
    assert not isinstance(err.value, CheckpointError)
    assert sleeps == [] and "transient" not in caplog.text  # not one retry
    assert sum(counted.calls.values()) == 1, counted.calls  # one try of one operation
    text = str(err.value)
    assert "no usable AWS credentials for the checkpoint store" in text
    assert "NoCredentialsError" in text and "AWS_ACCESS_KEY_ID" in text and "\n" not in text


def test_rejected_credentials_raise_credentials_error_without_the_secret(moto, monkeypatch):
    moto.client("s3").create_bucket(Bucket="ckpt")
    sleeps: list[float] = []
    store = store_with(moto, sleeps, key="AKIANOTAREALKEY00000", secret=SECRET)
    counted = Counted(store.fs, ("pipe_file",), monkeypatch)
    moto.enforce_auth(True)  # moto now checks keys: this one does not exist
    with pytest.raises(CredentialsError, match="InvalidAccessKeyId.*AWS_ACCESS_KEY_ID") as err:
        store.write_atomic("ledger.json", b"{}")
    assert sleeps == [] and counted.calls == {"pipe_file": 1}
    assert SECRET not in str(err.value) and "AKIANOTAREALKEY" not in str(err.value)


def test_with_credentials_the_same_store_saves(moto):
    """The control: same store, same server, credentials present: the save goes through."""
    moto.client("s3").create_bucket(Bucket="ckpt")
    sleeps: list[float] = []
    store = store_with(moto, sleeps)
    assert store.save(1, {"model.bin": b"weights"}).step == 1
    assert store.latest().step == 1 and sleeps == []
