"""Option groups shared by the verbs that generate images (`hunt`, `atlas`), written once.

Each group is a decorator that adds the same options, with the same names, types and help, to every verb
that uses it, and `collect` turns the parsed values into the keyword settings of `headhunter.workflow`'s
options objects (`HuntOptions`, `AtlasOptions`), leaving out what the user did not give so the model's
defaults apply. Light on purpose: the CLI starts without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import click

from headhunter.cli.params import NON_NEGATIVE, POSITIVE_INT, STEPS, STRENGTH, DType, PluginName, Scope, Seeds


def _group(*options: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


#: Which images: prompts and seeds.
pairs = _group(
    click.option("--prompt", "prompts", multiple=True,
                 help="A prompt, or @FILE with one per line. Repeatable. Default: the model's (digits: \"\", "
                      "unconditional; it also takes '0'..'9')."),
    click.option("--seeds", type=Seeds(), help="Seeds: '0-99', '3,5,8'. Default: the model's."),
)

#: How every image is made: w, u, steps, CFG, the perturbation, its scope, the batch size.
generation = _group(
    click.option("--scale", type=NON_NEGATIVE, help="Perturbation guidance scale w >= 0 (default: the model's, else 3)."),
    click.option("--strength", type=STRENGTH, help="SoftPAG strength u of each head, in (0, 1] (default: the model's, else 1)."),
    click.option("--steps", type=STEPS, help="Sampling steps (default: the model's, else 12)."),
    click.option("--cfg", type=NON_NEGATIVE, help="CFG scale s >= 0 (diffusers convention); default: the pipeline's."),
    click.option("--perturbation", default="softpag", show_default=True, type=PluginName("perturbation"),
                 help="Perturbation plugin (see `headhunter plugins`)."),
    click.option("--scope", default="joint", show_default=True, type=Scope(),
                 help="Rows the perturbation replaces: joint, image or pag_mask (docs/engine.md)."),
    click.option("--batch-size", type=POSITIVE_INT, help="Images per pipeline call (default: from memory)."),
)

#: The Hub visibility of a repo a verb creates (`push`, `atlas --push`, `atlas push`): one pair, everywhere.
visibility = _group(
    click.option("--private/--public", default=None,
                 help="Visibility of the repo when it is created (default: the Hub's; an existing repo keeps its own)."),
)


def dtype(help: str, default: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--dtype` with the one set of names (float32, float16, bfloat16; fp32, fp16, bf16 accepted)."""
    return click.option("--dtype", "dtype_name", type=DType(), default=default, show_default=default is not None,
                        help=help + " float32, float16 or bfloat16 (fp32, fp16, bf16 also accepted).")


def output_file(help: str, required: bool = False, *old_names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`-o/--output FILE`: where a verb writes one file (`--out DIR` is always a folder)."""
    return click.option("-o", "--output", *old_names, "output", required=required, metavar="FILE",
                        type=click.Path(dir_okay=False), help=help)


#: Resuming a checkpointed run.
resume = _group(
    click.option("--no-resume", is_flag=True, help="Start over even if OUT holds a checkpoint."),
)

#: The generation group's option names, as settings keywords.
GENERATION_KEYS = ("scale", "strength", "steps", "cfg", "perturbation", "scope", "batch_size")


def collect(values: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """The settings among `values` (parsed options) named by `keys`, without the ones left unset (None), so
    the model's defaults fill them in."""
    return {key: values[key] for key in keys if values.get(key) is not None}
