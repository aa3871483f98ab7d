"""Sites of a ComfyUI diffusion model, named as head-set files name them (diffusers module names).

Head-set files key their strengths by diffusers site names; ComfyUI's models have other module names and
other block objects. This module maps one onto the other, for the two ComfyUI classes it knows:

| model | site in the file (paper order = position) | ComfyUI block (`patches_replace["dit"]` key) | call |
|---|---|---|---|
| SD3 / SD3.5 (`comfy.ldm.modules.diffusionmodules.mmdit.MMDiT`) | `transformer_blocks.{i}.attn`, i = 0..depth-1 | `joint_blocks.{i}` = `("double_block", i)` | joint |
| SD3.5 | then `transformer_blocks.{i}.attn2` for the blocks with `x_block_self_attn` | `joint_blocks.{i}` = `("double_block", i)` | image |
| FLUX.1 (`comfy.ldm.flux.model.Flux`) | `transformer_blocks.{i}.attn` (paper L0-L18) | `double_blocks.{i}` = `("double_block", i)` | joint |
| FLUX.1 | `single_transformer_blocks.{j}.attn` (L19-L56) | `single_blocks.{j}` = `("single_block", j)` | single |

The site lists are made by the sd3 and flux plugins' own functions (`sd3_sites`, `flux_sites`), so a head
set validates against a ComfyUI model exactly as against the same model in diffusers. Other ComfyUI models
with double/single blocks are refused rather than guessed: HunyuanVideo orders `[img | txt]` in its double
blocks (`flipped_img_txt`), Chroma and the rest are their own classes.

ComfyUI is imported only inside `architecture` (when a ComfyUI model is already in hand).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from headhunter.errors import HeadSetError, ModelError
from headhunter.format.sites import Site
from headhunter.plugins.flux.sites import flux_sites
from headhunter.plugins.sd3.sites import sd3_sites

#: The ComfyUI classes this plugin guides, by architecture (as head sets name it).
SUPPORTED = {
    "sd3": "comfy.ldm.modules.diffusionmodules.mmdit.MMDiT",
    "flux": "comfy.ldm.flux.model.Flux",
}


@dataclass(frozen=True)
class ComfySite:
    """One attention site of a ComfyUI model: the project's `Site` (diffusers name, heads, kind), the ComfyUI
    block that holds it (`patches_replace["dit"]` key, e.g. `("double_block", 3)`), the block's module name
    (`joint_blocks.3`) and which attention call inside the block it is (`joint`, `image` or `single`)."""

    site: Site
    block: tuple[str, int]
    block_name: str
    call: str

    @property
    def name(self) -> str:
        return self.site.name


def diffusion_model_of(model: Any) -> Any:
    """The diffusion model inside a ComfyUI MODEL (a `ModelPatcher`), or `model` itself when it is one."""
    get = getattr(model, "get_model_object", None)
    return get("diffusion_model") if callable(get) else model


def architecture(dm: Any) -> str:
    """`"sd3"` for ComfyUI's MMDiT (SD3 / SD3.5), `"flux"` for `comfy.ldm.flux.model.Flux`.

    ModelError naming the class and the supported ones for anything else (HunyuanVideo subclasses-alike
    that flip the token order are refused too)."""
    import comfy.ldm.flux.model as flux_model
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit

    if isinstance(dm, mmdit.MMDiT):
        return "sd3"
    if isinstance(dm, flux_model.Flux) and not any(getattr(b, "flipped_img_txt", False) for b in dm.double_blocks):
        return "flux"
    raise ModelError(
        f"this ComfyUI MODEL runs {type(dm).__module__}.{type(dm).__name__}; headhunter's ComfyUI nodes guide "
        + ", ".join(f"{cls} ({arch})" for arch, cls in SUPPORTED.items())
    )


def comfy_sites(dm: Any) -> list[ComfySite]:
    """The model's sites in paper order, each with its ComfyUI block (see the module docstring)."""
    arch = architecture(dm)
    if arch == "sd3":
        blocks = list(dm.joint_blocks)
        heads = blocks[0].x_block.attn.num_heads
        dual = tuple(i for i, b in enumerate(blocks) if getattr(b.x_block, "x_block_self_attn", False))
        sites = sd3_sites(len(blocks), heads, dual)
        joint = [ComfySite(s, ("double_block", i), f"joint_blocks.{i}", "joint") for i, s in enumerate(sites[: len(blocks)])]
        image = [ComfySite(s, ("double_block", i), f"joint_blocks.{i}", "image") for i, s in zip(dual, sites[len(blocks):])]
        return joint + image
    double, single = list(dm.double_blocks), list(dm.single_blocks)
    sites = flux_sites(len(double), len(single), double[0].num_heads)
    out = [ComfySite(s, ("double_block", i), f"double_blocks.{i}", "joint") for i, s in enumerate(sites[: len(double)])]
    out += [ComfySite(s, ("single_block", j), f"single_blocks.{j}", "single") for j, s in enumerate(sites[len(double):])]
    return out


def describe(dm: Any, sites: list[ComfySite] | None = None) -> str:
    """`sd3 (comfy...MMDiT: 24 sites transformer_blocks.0.attn .. transformer_blocks.23.attn = joint_blocks.0 ..
    joint_blocks.23, 24 heads each)`: the model as error messages name it."""
    sites = comfy_sites(dm) if sites is None else sites
    arch = architecture(dm)
    heads = sorted({s.site.num_heads for s in sites})
    return (f"{arch} ({type(dm).__module__}.{type(dm).__name__}: {len(sites)} sites {sites[0].name} .. {sites[-1].name} "
            f"= ComfyUI {sites[0].block_name} .. {sites[-1].block_name}, {'/'.join(map(str, heads))} heads each)")


def check_fits(headset: Any, dm: Any, sites: list[ComfySite]) -> None:
    """HeadSetError naming the head set's model and this ComfyUI model when `headset` was made for another
    model: another architecture, a site this model does not have, or another head count at a site."""
    meta = headset.metadata
    arch = architecture(dm)
    made_for = (f"{meta.architecture} ({meta.base_model or 'base model not named'}: {len(meta.sites)} sites "
                f"{meta.sites[0].name} .. {meta.sites[-1].name})")
    if meta.architecture != arch:
        raise HeadSetError(f"head set {headset.name!r} was made for {made_for}, but this ComfyUI MODEL is "
                           f"{describe(dm, sites)}; load a head set made for {arch}")
    by_name = {s.name: s for s in sites}
    used = {name for _, piece in headset.pieces() for name in piece.strengths()}  # every interval of a schedule
    for name in [s.name for s in meta.sites if s.name in used]:
        here = by_name.get(name)
        if here is None:
            raise HeadSetError(f"head set {headset.name!r} (made for {made_for}) perturbs site {name!r}, which this "
                               f"ComfyUI MODEL does not have: it is {describe(dm, sites)}")
        wanted = next(s.num_heads for s in meta.sites if s.name == name)
        if wanted != here.site.num_heads:
            raise HeadSetError(f"head set {headset.name!r} (made for {made_for}) has {wanted} heads at {name!r}; "
                               f"this ComfyUI MODEL has {here.site.num_heads} there ({here.block_name}): it is "
                               f"{describe(dm, sites)}")


__all__ = ["ComfySite", "SUPPORTED", "architecture", "check_fits", "comfy_sites", "describe", "diffusion_model_of"]
