"""Blocks: Prefect's block standards, readable validation errors, secrets, registration."""

from __future__ import annotations

import ast
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from prefect import flow
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites.blocks import BlockStandardTestSuite
from pydantic import ValidationError

from spot_workflows.config import SpotPolicy
from spot_workflows.errors import ConfigError
from spot_workflows.prefect import (
    AwsBatchBackendBlock,
    GcpBatchBackendBlock,
    LocalBackendBlock,
    SpotPolicyBlock,
    run_spot_step,
)

BLOCKS = [SpotPolicyBlock, LocalBackendBlock, AwsBatchBackendBlock, GcpBatchBackendBlock]
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize("block_class", BLOCKS, ids=lambda b: b.__name__)
class TestBlockStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self, block_class: type[Block]) -> type[Block]:
        return block_class

    def test_has_a_valid_image(self, block: type[Block]) -> None:
        # the logo is optional for these blocks; Prefect's own check downloads it
        assert block._logo_url is None

    def test_block_type_is_namespaced(self, block: type[Block]) -> None:
        assert block.get_block_type_slug().startswith("spot-workflows-")


def test_policy_block_has_every_policy_field_and_round_trips():
    assert set(SpotPolicyBlock.model_fields) == set(SpotPolicy.model_fields)
    block = SpotPolicyBlock(preemption_budget=1, capacity_timeout_s=60, start_on="ON_DEMAND")
    assert block.to_policy() == SpotPolicy(
        preemption_budget=1, capacity_timeout_s=60, start_on="ON_DEMAND"
    )
    assert SpotPolicyBlock().to_policy() == SpotPolicy()


@pytest.mark.parametrize(
    ("make", "field", "says"),
    [
        (lambda: SpotPolicyBlock(preemption_budget=-1), "preemption_budget", "greater than"),
        (lambda: SpotPolicyBlock(capacity_timeout_s=0), "capacity_timeout_s", "greater than"),
        (lambda: SpotPolicyBlock(start_on="SOMETIMES"), "start_on", "SPOT"),
        (lambda: LocalBackendBlock(checkpoint_root="ftp://x/y"), "checkpoint_root", "s3://"),
        (lambda: LocalBackendBlock(reclaim_after_s=[0]), "reclaim_after_s", "greater than"),
        (lambda: LocalBackendBlock(spot_unavailable=[(5, 1)]), "spot_unavailable", "end after"),
        (
            lambda: LocalBackendBlock(reclaim_after_s=[1.0], poisson_rate_per_hour=2),
            "poisson_rate_per_hour",
            "choose one spot market",
        ),
        (
            lambda: AwsBatchBackendBlock(
                spot_queue="s", on_demand_queue="o", aws_access_key_id="AKIAEXAMPLE"
            ),
            "aws_secret_access_key",
            "set together",
        ),
        (lambda: AwsBatchBackendBlock(spot_queue="s"), "on_demand_queue", "Field required"),
        (
            lambda: GcpBatchBackendBlock(region="us-central1", service_account_info="{nope"),
            "service_account_info",
            "JSON",
        ),
    ],
)
def test_a_bad_value_names_the_field(make, field, says):
    with pytest.raises(ValidationError) as info:
        make()
    text = str(info.value)
    assert field in text and says in text, text


def test_a_bad_step_value_in_a_flow_names_the_field(tmp_path):
    backend = LocalBackendBlock(
        state_dir=str(tmp_path / "b"), checkpoint_root=f"file://{tmp_path / 'c'}"
    )

    @flow
    def bad_gpus():
        return run_spot_step(command=["true"], backend=backend, gpus=-1)

    @flow
    def bad_key():
        return run_spot_step(command=["true"], backend=backend, key="../escape")

    with pytest.raises(ValidationError, match="gpus"):
        bad_gpus()
    with pytest.raises(ConfigError, match="key: step key '../escape' must be"):
        bad_key()
    assert not (tmp_path / "b").exists()  # nothing was submitted


def test_outside_a_flow_a_key_is_required(tmp_path):
    backend = LocalBackendBlock(state_dir=str(tmp_path / "b"))
    with pytest.raises(ConfigError, match="pass key="):
        run_spot_step(command=["true"], backend=backend)


def test_secrets_are_never_shown_and_survive_save_and_load():
    block = AwsBatchBackendBlock(
        spot_queue="spot",
        on_demand_queue="od",
        aws_access_key_id="AKIAEXAMPLE",
        aws_secret_access_key=SECRET,
        checkpoint_root="s3://bucket/ckpt",
    )
    assert SECRET not in repr(block) and SECRET not in str(block)
    assert SECRET not in block.model_dump_json()
    block.save("aws-secret-test", overwrite=True)
    loaded = AwsBatchBackendBlock.load("aws-secret-test")
    assert loaded.aws_secret_access_key.get_secret_value() == SECRET
    assert loaded.checkpoint_uri_for("k") == "s3://bucket/ckpt/k"
    session = loaded.boto3_session()  # real boto3 session, no network
    assert session.get_credentials().secret_key == SECRET


def test_blocks_are_a_prefect_collection_registered_on_the_server(client):
    (ep,) = [e for e in entry_points(group="prefect.collections") if e.name == "spot_workflows"]
    assert ep.value == "spot_workflows.prefect"
    # the server imported the collection at startup and registered every block type (none of
    # the local or GCP blocks is ever saved in these tests)
    for block_class in BLOCKS:
        block_type = client.read_block_type_by_slug(block_class.get_block_type_slug())
        assert str(block_type.documentation_url) == str(block_class._documentation_url)
        assert block_type.name == block_class.get_block_type_name()


def test_policy_block_saved_and_loaded_by_name():
    SpotPolicyBlock(preemption_budget=1, deadline_s=3600).save("tight", overwrite=True)
    loaded = SpotPolicyBlock.load("tight")
    assert loaded.to_policy() == SpotPolicy(preemption_budget=1, deadline_s=3600)


def test_the_prefect_adapter_never_imports_airflow():
    package = Path(__file__).resolve().parents[3] / "spot_workflows" / "prefect"
    modules = sorted(package.glob("*.py"))
    assert len(modules) >= 5
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
            for name in names:
                assert not name.startswith(("airflow", "spot_workflows.airflow")), (path, name)
