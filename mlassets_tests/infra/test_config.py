"""Stack config: defaults, and one clear line for a value that cannot be used."""

from __future__ import annotations

import pytest

from mlassets_tests.infra.conftest import run_program

pulumi = pytest.importorskip("pulumi")

from mlassets_infra import config  # noqa: E402 - infra/ is put on sys.path by the conftest


def test_every_key_has_a_default_and_the_prefix_comes_from_the_stack():
    settings = config.parse({}, "Dev_1")
    assert settings.name_prefix == "mlassets-dev1"
    assert settings.event_hub_partitions == 4
    assert settings.event_hub_retention_days == 1
    assert settings.queue_lock_seconds == 60
    assert settings.postgres_enabled is False
    assert settings.compact_name("lake") == "mlassetsdev1lake"


@pytest.mark.parametrize("value", ["0", "33", "four", "4.5"])
def test_a_partition_count_outside_1_to_32_is_refused_naming_key_value_and_range(value):
    with pytest.raises(config.ConfigError) as failure:
        config.parse({"eventHubPartitions": value}, "dev")
    assert str(failure.value) == (
        f"config mlassets:eventHubPartitions is {value!r}; accepted: an integer from 1 to 32"
    )


@pytest.mark.parametrize(
    ("key", "value", "accepted"),
    [
        ("eventHubRetentionDays", "8", "an integer from 1 to 7"),
        ("queueLockSeconds", "301", "an integer from 5 to 300"),
        ("postgresEnabled", "yes", "true or false"),
        ("namePrefix", "Has_Upper", "3 to 18 lowercase letters, digits, '-'"),
        ("sqlAdminPrincipalType", "Robot", "one of User, Group, Application"),
        ("dagsterPrincipalId", "not-a-guid", "a GUID"),
    ],
)
def test_other_bad_values_name_what_is_accepted(key, value, accepted):
    with pytest.raises(config.ConfigError, match=f"mlassets:{key} is '{value}'; accepted: "):
        config.parse({key: value}, "dev")
    with pytest.raises(config.ConfigError) as failure:
        config.parse({key: value}, "dev")
    assert str(failure.value).endswith(accepted)


def test_an_unknown_key_is_refused_with_the_known_ones():
    with pytest.raises(config.ConfigError, match=r"unknown config key.*mlassets:partitions"):
        config.parse({"partitions": "4"}, "dev")


def test_postgres_for_a_principal_from_config_needs_its_name():
    values = {
        "postgresEnabled": "true",
        "dagsterPrincipalId": "44444444-4444-4444-4444-444444444444",
    }
    with pytest.raises(config.ConfigError, match="dagsterPrincipalName"):
        config.parse(values, "dev")


def test_config_errors_end_the_program_without_a_stack_trace():
    # pulumi.RunError is what Pulumi reports as one line, without the program's traceback.
    assert issubclass(config.ConfigError, pulumi.RunError)


def test_a_bad_value_stops_the_program_before_any_resource():
    with pytest.raises(config.ConfigError, match="eventHubPartitions is '40'"):
        run_program({"eventHubPartitions": "40"})


def test_main_runs_the_program_with_the_stacks_config():
    """`infra/__main__.py` as `pulumi up` runs it: config from the stack, resources out."""
    import runpy

    from mlassets.settings import PROJECT_ROOT
    from mlassets_tests.infra.conftest import AzureMocks, Deployment, fresh_event_loop

    fresh_event_loop()
    deployment = Deployment()
    pulumi.runtime.set_mocks(AzureMocks(deployment), project="mlassets", stack="prod")
    pulumi.runtime.set_all_config({"mlassets:eventHubPartitions": "16"})
    try:

        @pulumi.runtime.test
        def main():
            runpy.run_path(str(PROJECT_ROOT / "infra" / "__main__.py"))

        main()
    finally:
        pulumi.runtime.set_all_config({})
    hub = deployment.one("eventhub:EventHub").inputs
    assert hub["partitionCount"] == 16
    assert deployment.one("eventhub:Namespace").inputs["namespaceName"] == "mlassets-prod-eh"


def test_a_misspelled_key_in_the_stack_config_is_refused():
    pulumi.runtime.set_all_config({"mlassets:eventHubPartitons": "16"})
    try:
        with pytest.raises(config.ConfigError, match=r"unknown config key.*eventHubPartitons"):
            config.from_pulumi()
    finally:
        pulumi.runtime.set_all_config({})


def test_the_example_stack_file_holds_only_known_keys_at_their_defaults():
    import yaml

    from mlassets.settings import PROJECT_ROOT

    stack = yaml.safe_load((PROJECT_ROOT / "infra" / "Pulumi.dev.yaml").read_text())["config"]
    values = {key.split(":", 1)[1]: str(value) for key, value in stack.items()}
    example, defaults = config.parse(values, "dev"), config.parse({}, "dev")
    assert example == defaults  # the file documents the defaults (namePrefix: mlassets-dev)
