"""headhunter-example: a complete third-party plugin (an objective, a perturbation and a CLI command)."""

import click
import torch
from pydantic import BaseModel, ConfigDict, Field

from headhunter import Objective, Perturbation, hookimpl
from headhunter.contracts.objective import as_tensor_images


class Darkness(Objective):
    """Mean darkness of the image: 1 - mean pixel value, in [0, 1]."""

    name = "example-darkness"

    def score(self, images, prompts):
        return 1.0 - as_tensor_images(images).mean(dim=(1, 2, 3))


class Negate(Perturbation):
    """Target T·V = -V: each selected head outputs the negative of its values (a toy perturbation)."""

    name = "example-negate"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        gain: float = Field(default=1.0, gt=0, description="multiplier of -V")

    def target(self, q, k, v, layout):
        return -self.params.gain * v


@click.command("hello")
@click.option("--name", default="world")
def hello(name):
    """Say hello (an example plugin command)."""
    click.echo(f"hello {name} from headhunter-example")


@hookimpl
def register_objectives(register):
    register("example-darkness", Darkness)


@hookimpl
def register_perturbations(register):
    register("example-negate", Negate)


@hookimpl
def register_commands(cli):
    cli.add_command(hello)
