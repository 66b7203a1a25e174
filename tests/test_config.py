"""RunConfig: one definition serves the flags, the defaults, the checks and the checkpoint's configuration."""

import argparse
import dataclasses

import pytest
from mnist import parser as mnist_parser

from pyro_iwae.checkpoints import ADDED_FIELD_DEFAULTS
from pyro_iwae.experiments.config import ConfigError, RunConfig, command_line


def parse(*flags: str) -> RunConfig:
    return RunConfig.from_args(mnist_parser().parse_args(list(flags)))


def test_the_flags_defaults_are_the_configs():
    assert parse() == RunConfig()
    assert (RunConfig().objective, RunConfig().particles, len(RunConfig().learning_rates())) == ("iwae", 5, 10)
    assert str(RunConfig().directory) == "runs/mnist-iwae-k5-1layer"
    config = RunConfig(prior="vamp", guide="iaf", layers=2, init="glorot")
    assert str(config.directory) == "runs/mnist-iwae-k5-2layer-vamp-prior-iaf-guide-glorot-init"
    # what is worked out from other fields follows them when they change
    longer = dataclasses.replace(RunConfig(), schedule="burda", particles=50)
    assert len(longer.learning_rates()) == 3280 and str(longer.directory) == "runs/mnist-iwae-k50-1layer"


def test_the_checkpointed_fields_are_those_old_checkpoints_hold():
    """
    A checkpoint records these keys, and a resume compares them with its own (a key it lacks reads as None,
    or as ADDED_FIELD_DEFAULTS gives it): a field added later must read as its default, or every older run would be
    refused.
    """
    older = {"objective", "particles", "layers", "prior", "guide", "dataset", "schedule", "batch_size", "lr"}
    older |= {"train_size", "seed"}
    added = set(RunConfig().checkpointed_fields()) - older
    assert added == {"init_from", "groups", "beta", "init"} and all(
        RunConfig().checkpointed_fields()[name] == ADDED_FIELD_DEFAULTS.get(name) for name in added
    )
    assert RunConfig().checkpointed_fields() == {
        "objective": "iwae",
        "particles": 5,
        "groups": None,
        "beta": None,
        "layers": 1,
        "prior": "normal",
        "guide": "normal",
        "dataset": "mnist",
        "schedule": "constant",
        "batch_size": 20,
        "lr": 0.001,
        "train_size": None,
        "seed": 0,
        "init": "pytorch",
        "init_from": None,
    }


def test_one_init_from_path_spelled_two_ways_is_one_checkpointed_value():
    """A run started with `--init-from runs/a` resumes with `--init-from ./runs/a/` (the strings are compared)."""
    spellings = [parse("--init-from", path).checkpointed_fields()["init_from"] for path in ("runs/a", "./runs/a/")]
    assert spellings == ["runs/a", "runs/a"]


def test_command_line_gives_back_the_config():
    config = RunConfig(
        objective="elbo", particles=1, schedule="burda", train_size=500, snapshot_every=100, plots=False, out="x"
    )
    flags = command_line(dataclasses.asdict(config))
    assert flags[:4] == ["--objective", "elbo", "--particles", "1"] and "--no-plots" in flags
    assert parse(*flags) == config
    assert command_line(dataclasses.asdict(RunConfig())) == ["--objective", "iwae", "--particles", "5"]


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(particles=0), "--particles must be at least 1, got 0"),
        (dict(objective="piwae", groups=2, prior="vamp"), "--objective piwae trains the model's and the guide's"),
        (dict(seed=2**32), "--seed must be at most 4294967295, got 4294967296"),
        (
            dict(objective="vae"),
            "--objective must be one of elbo, iwae, iwae-stl, iwae-dreg, miwae, ciwae, piwae, got 'vae'",
        ),
        (dict(layers=3), "--layers must be one of 1, 2, got 3"),
        (dict(schedule="burda", epochs=3281), "the burda schedule has 3280 epochs"),
        (dict(train_size=10), "--batch-size 20 is more than the 10 training images: lower it, or raise --train"),
        (dict(batch_size=70_000), "--batch-size 70000 is more than the 60000 training images: lower it$"),
        (dict(lr=-1e-3), "--lr must be positive"),
        (dict(objective="miwae"), "--objective miwae needs --groups"),
        (dict(objective="ciwae"), "--objective ciwae needs --beta"),
        (dict(objective="ciwae", beta=2.0), r"--beta must lie in \[0, 1\], got 2.0"),
        (dict(groups=4), "--groups 4 is not an option of --objective iwae"),
        (dict(objective="iwae-stl", guide="iaf", compile=True), "--compile cannot trace --objective iwae-stl with"),
        (dict(init="glorot", init_from="runs/a"), "--init-from replaces the initial weights, so --init glorot would"),
        (dict(init="xavier"), "--init must be one of pytorch, glorot, got 'xavier'"),
    ],
)
def test_a_config_that_cannot_run_is_refused_where_it_is_made(fields, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**fields)


def test_a_script_can_share_some_flags_with_other_defaults():
    parser = RunConfig.add_arguments(argparse.ArgumentParser(), ["schedule", "epochs", "progress"], schedule="burda")
    config = RunConfig.from_args(parser.parse_args(["--no-progress"]), ["schedule", "epochs", "progress"])
    assert (config.schedule, config.epochs, config.progress) == ("burda", None, False)


def test_an_objectives_options_come_from_their_flags():
    assert RunConfig(objective="piwae", groups=4).objective_options() == {"num_groups": 4}
    assert RunConfig(objective="ciwae", beta=0.25).objective_options() == {"beta": 0.25}
    assert RunConfig(objective="iwae").objective_options() == {}
