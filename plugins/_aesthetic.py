"""The LAION aesthetic predictor v2: CLIP ViT-L/14 image embedding -> an MLP head, about 1-10 (6+ is good).

Weights: one safetensors file with the head (`layers.N.*` or `mlp.layers.N.*`) and, optionally, the CLIP
vision tower (`clip.*`); or a plain `.pth` state dict of the head with the CLIP weights from the CLIP repo.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic
import torch

from headhunter.errors import ObjectiveError
from headhunter.contracts.objective import Images
from headhunter.plugins._clip import CLIP_L14, ClipPreprocess, load_preprocess, placed, vision_config
from headhunter.plugins._weights import (
    SMALL_FILES,
    HubObjective,
    hub_errors,
    _Params,
    cached,
    load_state_dict,
    missing_weights,
    resolve_file,
)

AESTHETIC_WEIGHTS = "RE-N-Y/laion-aesthetic"
AESTHETIC_FILENAME = "model.safetensors"


@dataclass
class AestheticBundle:
    """CLIP vision tower with projection + the LAION MLP head (a chain of Linear layers)."""

    model: torch.nn.Module  # .vision (CLIPVisionModelWithProjection) and .head (the MLP), as loaded
    preprocess: ClipPreprocess
    copies: dict[tuple[Any, ...], Any] = field(default_factory=dict)

    @torch.no_grad()
    def __call__(self, images: Images) -> torch.Tensor:
        pixels = self.preprocess(images)
        model = placed(self.model, self.copies, pixels)
        embeds = model.vision(pixel_values=pixels).image_embeds
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        return model.head(embeds).squeeze(-1).float()


def mlp_head(state: Mapping[str, torch.Tensor], where: str) -> torch.nn.Sequential:
    """The LAION aesthetic MLP from `layers.{i}.weight/bias`: Linear layers only (its dropouts are no-ops in eval)."""
    indices = sorted({int(k.split(".")[1]) for k in state if k.startswith("layers.") and k.endswith(".weight")})
    if not indices:
        raise ObjectiveError(f"{where} has no aesthetic head (keys 'layers.N.weight' or 'mlp.layers.N.weight')")
    linears = []
    for i in indices:
        weight, bias = state[f"layers.{i}.weight"], state.get(f"layers.{i}.bias")
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
        linears.append(layer)
    for a, b in zip(linears, linears[1:]):
        if a.out_features != b.in_features:
            raise ObjectiveError(f"{where}: aesthetic head layers do not chain ({a} then {b})")
    if linears[-1].out_features != 1:
        raise ObjectiveError(f"{where}: aesthetic head ends in {linears[-1].out_features} outputs, expected 1")
    return torch.nn.Sequential(*linears).eval().requires_grad_(False)


def load_aesthetic(weights: str, filename: str, clip: str) -> AestheticBundle:
    """LAION aesthetic predictor: head (+ CLIP vision weights if the file has `clip.*` keys) from `weights`."""

    def load() -> AestheticBundle:
        from transformers import CLIPVisionModelWithProjection

        where = f"{weights}/{filename}"
        state = load_state_dict(resolve_file(weights, filename))
        head_state = {k.removeprefix("mlp."): v for k, v in state.items() if not k.startswith("clip.")}
        clip_state = {k.removeprefix("clip."): v for k, v in state.items() if k.startswith("clip.")}
        preprocess = load_preprocess(clip)
        try:
            config = vision_config(clip)
            if clip_state:
                vision = CLIPVisionModelWithProjection(config)
                try:
                    result = vision.load_state_dict(clip_state, strict=False)
                except RuntimeError as err:  # shape mismatch
                    raise ObjectiveError(f"{where}: CLIP vision weights do not fit {clip}'s config: {err}") from None
                unexpected = [k for k in result.unexpected_keys if not k.endswith("position_ids")]
                if result.missing_keys or unexpected:
                    raise ObjectiveError(
                        f"{where}: CLIP vision weights do not fit {clip}'s config "
                        f"(missing {result.missing_keys[:3]}, unexpected {unexpected[:3]})"
                    )
            else:
                vision = CLIPVisionModelWithProjection.from_pretrained(clip, config=config, trust_remote_code=False)
        except hub_errors() as err:
            what = "the CLIP config" if clip_state else "the CLIP vision tower"
            raise missing_weights(clip, what, err, SMALL_FILES if clip_state else "") from None
        head = mlp_head(head_state, where)
        if head[0].in_features != vision.config.projection_dim:
            raise ObjectiveError(
                f"{where}: head expects {head[0].in_features}-d embeddings, CLIP {clip} gives {vision.config.projection_dim}"
            )
        holder = torch.nn.Module()
        holder.vision, holder.head = vision, head
        return AestheticBundle(holder.eval().requires_grad_(False), preprocess)

    return cached(("aesthetic", weights, filename, clip), load)


class Aesthetic(HubObjective):
    """LAION aesthetic predictor v2 (CLIP ViT-L/14 + MLP): about 1-10, 6+ is good (the paper's threshold)."""

    name = "aesthetic"

    class Params(_Params):
        weights: str = pydantic.Field(AESTHETIC_WEIGHTS, description="repo/folder with the head (and CLIP) weights")
        filename: str = pydantic.Field(AESTHETIC_FILENAME, description="weights file: .safetensors or a .pth state dict")
        clip: str = pydantic.Field(CLIP_L14, description="CLIP repo: config, preprocessing (and weights if not in file)")

    def load(self) -> None:
        self.predictor = load_aesthetic(self.params.weights, self.params.filename, self.params.clip)

    def downloads(self) -> list[tuple[str, str]]:
        # the default file carries the CLIP vision weights too: the CLIP repo gives configs only
        clip_include = SMALL_FILES if self.params.filename.endswith(".safetensors") else ""
        return [(self.params.weights, f'--include "{self.params.filename}"'), (self.params.clip, clip_include)]

    def score(self, images: Images, prompts: Sequence[str]) -> torch.Tensor:
        return self.predictor(images)
