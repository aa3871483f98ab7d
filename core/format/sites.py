"""Sites: the attention modules of a model that heads live in, in the paper's layer order.

A site is one attention module (`transformer_blocks.7.attn`) with its number of heads and its kind.
A model's sites are ordered; the paper's layer index `L` is the position in that order, so `L12H3`
means head 3 of the 13th site (0-based). Adapters list the sites of a live model and describe the published
models they know (`KnownModel`, registered with the `register_base_models` hook), so head sets can be
written without loading any weights; core keeps only the notion of a site and the paper notation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from headhunter.errors import HeadSetError
from headhunter.format.text import safe_tree

SiteKind = Literal["joint", "single", "image"]
#: Most heads a site may have (published models have at most 48; bounds memory for files from outside).
MAX_HEADS = 4096

_NOTATION = re.compile(r"^\s*L(\d+)H(\d+)(?:@([0-9.eE+-]+))?\s*$")


class Site(BaseModel):
    """One attention module: its dotted name in the model, its head count and its kind.

    kind: `joint` (text and image tokens, two streams: SD3 blocks, FLUX double-stream),
    `single` (text and image tokens in one stream: FLUX single-stream), `image` (image tokens only:
    SD3.5-medium's `attn2`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _safe_strings(cls, data: Any) -> Any:  # a site name from a file is printed: made terminal-safe
        return safe_tree(data) if isinstance(data, dict) else data

    name: str = Field(min_length=1, description="dotted module name, e.g. transformer_blocks.7.attn")
    num_heads: int = Field(ge=1, le=MAX_HEADS, description="number of attention heads at this site")
    kind: SiteKind = Field(default="joint", description="joint | single | image")


def parse_notation(text: str) -> tuple[int, int, float | None]:
    """Parse paper notation `L12H3` or `L12H3@0.5` into (layer, head, strength or None)."""
    match = _NOTATION.match(text)
    if match is None:
        raise HeadSetError(
            f"cannot parse head {text!r}: expected paper notation like 'L12H3' or 'L12H3@0.5' "
            "(layer and head 0-based, optional strength in [0, 1])"
        )
    layer, head, strength = match.groups()
    try:
        value = None if strength is None else float(strength)
    except ValueError:
        raise HeadSetError(f"cannot parse strength {strength!r} in head {text!r}") from None
    return int(layer), int(head), value


def format_notation(layer: int, head: int, strength: float | None = None) -> str:
    """Render a head in paper notation; the strength is shown only when it is not 1."""
    if strength is None or strength == 1.0:
        return f"L{layer}H{head}"
    return f"L{layer}H{head}@{strength:g}"


def head_range(sites: Sequence[Site]) -> str:
    """The heads a model has, in paper notation: `L0-L5, H0-H7` (6 layers of 8 heads); runs of layers with
    different head counts are listed one by one: `L0-L12, H0-H23; L13-L20, H0-H11`."""
    if not sites:
        return "no heads (the model has no attention sites)"
    runs: list[list[int]] = []  # [first layer, last layer, heads]
    for layer, site in enumerate(sites):
        if runs and runs[-1][2] == site.num_heads:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer, site.num_heads])

    def span(first: int, last: int, prefix: str) -> str:
        return f"{prefix}{first}" if first == last else f"{prefix}{first}-{prefix}{last}"

    return "; ".join(f"{span(a, b, 'L')}, {span(0, n - 1, 'H')}" for a, b, n in runs)


def missing_head(sites: Sequence[Site], layer: int, head: int) -> str | None:
    """None when head `head` of paper layer `layer` exists in a model with these sites, else why not, with
    the allowed range: `L0H99 does not exist in this model: layer 0 (transformer_blocks.0.attn) has 8 heads
    (H0-H7); allowed: L0-L5, H0-H7`. (A negative head is the caller's to refuse.)"""
    name = format_notation(layer, head)
    if not 0 <= layer < len(sites):
        return f"{name} does not exist in this model: it has {len(sites)} layers; allowed: {head_range(sites)}"
    if not 0 <= head < sites[layer].num_heads:
        count = sites[layer].num_heads
        return (f"{name} does not exist in this model: layer {layer} ({sites[layer].name}) has {count} heads "
                f"(H0-H{count - 1}); "
                f"allowed: {head_range(sites)}")
    return None


class KnownModel(NamedTuple):
    """A model described without loading it: its architecture family, its sites in paper order and, for a
    model with a closed vocabulary, the prompts it accepts.

    Plugins register these with the `register_base_models` hook (built-ins: the SD3/SD3.5, FLUX.1, FLUX.2,
    Qwen-Image and Wan checkpoints keyed by Hub id, and the embedded demo model keyed by its registered name
    `digits`); `HeadSet.from_heads(..., base_model=...)` reads them, and the checks that run before a model
    loads (`headhunter.format.preflight`) compare head sets and prompts with them.

    prompts: every prompt the model accepts (the digits model: '0'..'9' and '' for unconditional), or None
    when any text is a prompt. layout: the lines `headhunter inspect` prints for the token layout at the
    model's own image size, for a model it can then describe without loading (None: inspect reads configs).
    """

    architecture: str
    sites: tuple[Site, ...]
    prompts: tuple[str, ...] | None = None
    layout: tuple[str, ...] | None = None
