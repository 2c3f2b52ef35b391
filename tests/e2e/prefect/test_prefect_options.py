"""The Prefect entry points take one set of options, checked when the flow is defined."""

from __future__ import annotations

import pytest

from spot_workflows.errors import ConfigError
from spot_workflows.prefect import (
    LocalBackendBlock,
    SpotTask,
    StepOptions,
    run_spot_step,
    spot_task,
)
from spot_workflows.prefect.tasks import build_spec


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"retries": -1}, "retries must be a whole number >= 0, got -1"),
        ({"retries": True}, "retries must be a whole number >= 0, got True"),
        ({"poll_interval": 0}, "poll_interval must be a finite number > 0, got 0"),
        ({"poll_interval": float("inf")}, "poll_interval must be a finite number > 0, got inf"),
        ({"retry_delay_seconds": -5}, "retry_delay_seconds must be a finite number >= 0"),
        ({"tags": "nightly"}, "tags must be a list of strings, got the string 'nightly'"),
        ({"on_event": "print"}, "on_event must be callable, got str"),
    ],
)
def test_bad_options_fail_when_the_step_is_defined(bad, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as err:
        spot_task(backend=LocalBackendBlock(), **bad)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="must be"):
        run_spot_step(command=["true"], backend=LocalBackendBlock(), **bad)


def test_options_and_step_fields_are_told_apart():
    options, fields = StepOptions.split(
        backend="b", retries=2, tags=["x"], gpus=1, env={"A": "1"}, image="img"
    )
    assert (options.backend, options.retries, tuple(options.tags)) == ("b", 2, ("x",))
    assert fields == {"gpus": 1, "env": {"A": "1"}, "image": "img"}
    task = spot_task(backend=LocalBackendBlock(), retries=2, name="train", gpus=1)(lambda: ["x"])
    assert isinstance(task, SpotTask) and task.options.retries == 2
    assert task.task.retries == 2 and task.task.name == "train" and task.step_fields == {"gpus": 1}


def test_both_an_options_object_and_loose_options_is_refused():
    with pytest.raises(ConfigError, match="pass options= or retries, not both"):
        SpotTask(lambda: ["x"], options=StepOptions(backend=LocalBackendBlock()), retries=1)


def test_a_bad_step_field_is_a_one_line_config_error_not_a_validation_error():
    with pytest.raises(ConfigError, match=r"invalid step.*gpus: .*\(got -1\)") as err:
        build_spec(
            produced=["python", "train.py"],
            key="s1",
            backend=LocalBackendBlock(),
            step_fields={"gpus": -1},
        )
    assert "\n" not in str(err.value)
