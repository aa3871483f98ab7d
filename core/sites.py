"""Sites: the attention modules of a model that heads live in, in the paper's layer order.

A site is one attention module (`transformer_blocks.7.attn`) with its number of heads and its kind.
A model's sites are ordered; the paper's layer index `L` is the position in that order, so `L12H3`
means head 3 of the 13th site (0-based). Adapters list the sites of a live model; the tables here
describe the published architectures so head sets can be written without loading any weights.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import HeadSetError

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


def sd3_sites(num_layers: int, num_heads: int, dual_attention_layers: tuple[int, ...] = ()) -> list[Site]:
    """Sites of an SD3/SD3.5 transformer: one joint site per block, then the image-only `attn2` sites.

    The `attn2` sites come after all joint sites so that `Lk` is block k's joint attention on every
    SD3 variant (the paper's numbering).
    """
    sites = [Site(name=f"transformer_blocks.{i}.attn", num_heads=num_heads, kind="joint") for i in range(num_layers)]
    sites += [
        Site(name=f"transformer_blocks.{i}.attn2", num_heads=num_heads, kind="image") for i in dual_attention_layers
    ]
    return sites


def flux_sites(num_layers: int, num_single_layers: int, num_heads: int) -> list[Site]:
    """Sites of a FLUX.1 transformer: double-stream blocks 0..n-1, then single-stream blocks."""
    double = [Site(name=f"transformer_blocks.{i}.attn", num_heads=num_heads, kind="joint") for i in range(num_layers)]
    single = [
        Site(name=f"single_transformer_blocks.{i}.attn", num_heads=num_heads, kind="single")
        for i in range(num_single_layers)
    ]
    return double + single


#: Published architectures, so head sets (presets) can be built without loading a model.
#: Values: (architecture family, site list).
KNOWN_MODELS: dict[str, tuple[str, list[Site]]] = {
    "stabilityai/stable-diffusion-3-medium-diffusers": ("sd3", sd3_sites(24, 24)),
    "stabilityai/stable-diffusion-3.5-medium": ("sd3", sd3_sites(24, 24, tuple(range(13)))),
    "stabilityai/stable-diffusion-3.5-large": ("sd3", sd3_sites(38, 38)),
    "black-forest-labs/FLUX.1-dev": ("flux", flux_sites(19, 38, 24)),
    "black-forest-labs/FLUX.1-schnell": ("flux", flux_sites(19, 38, 24)),
}


def known_model_sites(base_model: str) -> tuple[str, list[Site]]:
    """Architecture family and sites of a published model, by its Hub id."""
    try:
        return KNOWN_MODELS[base_model]
    except KeyError:
        raise HeadSetError(
            f"unknown base model {base_model!r}; known without loading: {', '.join(sorted(KNOWN_MODELS))}. "
            "For other models pass sites=adapter.sites(model)."
        ) from None
