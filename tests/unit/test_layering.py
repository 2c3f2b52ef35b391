"""The package's dependency rules (pure core, thin adapters), checked on the source (no imports executed)."""

import ast
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "spot_workflows"
FORBIDDEN_IN_CORE = ("boto3", "botocore", "google", "airflow", "prefect", "fsspec", "s3fs", "gcsfs")


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(sub: str) -> list[Path]:
    return sorted((PKG / sub).rglob("*.py"))


@pytest.mark.parametrize("path", modules("core"), ids=lambda p: p.name)
def test_core_imports_only_stdlib_pydantic_errors_and_validation(path):
    """``config`` builds on ``core`` (it re-exports SpotPolicy), never the other way round."""
    for name in imports_of(path):
        top = name.split(".")[0]
        assert top not in FORBIDDEN_IN_CORE, f"{path.name} imports {name}"
        if top == "spot_workflows":
            assert name.startswith(
                ("spot_workflows.core", "spot_workflows.errors", "spot_workflows.validation")
            ), f"{path.name} imports {name}"
        else:
            assert top in sys.stdlib_module_names or top in ("pydantic", "__future__"), (
                f"{path.name} imports third-party {name}"
            )


@pytest.mark.parametrize("path", modules("core"), ids=lambda p: p.name)
def test_core_never_reads_the_clock_or_sleeps(path):
    src = path.read_text()
    for needle in ("time.time(", "time.sleep(", "datetime.now(", "time.monotonic(", "open("):
        assert needle not in src, f"{path.name} calls {needle}"


@pytest.mark.parametrize("path", modules("runtime"), ids=lambda p: p.name)
def test_runtime_never_imports_backends_or_engines(path):
    for name in imports_of(path):
        assert not name.startswith(
            ("spot_workflows.backends", "spot_workflows.airflow", "spot_workflows.prefect")
        ), f"{path.name} imports {name}"
        assert name.split(".")[0] not in ("airflow", "prefect", "boto3", "google")


def test_nothing_imports_the_engine_adapters():
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).parts
        for name in imports_of(path):
            if name.startswith("spot_workflows.airflow"):
                assert rel[0] == "airflow", f"{path} imports {name}"
            if name.startswith("spot_workflows.prefect"):
                assert rel[0] == "prefect", f"{path} imports {name}"


def test_the_check_catches_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import boto3\nfrom airflow.models import DAG\n")
    assert {"boto3", "airflow.models"} <= imports_of(bad)
