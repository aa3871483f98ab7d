"""Preference scorers on CLIP models: PickScore, CLIP score and HPS v2 (CLIP (image, prompt) pair scores).

PickScore and HPS v2 differ only in weights and whether the cosine is scaled by CLIP's logit scale; CLIP
score adds a prompt template. Weights and their loading: `headhunter.plugins._weights`; CLIP
preprocessing and models: `headhunter.plugins._clip`; the LAION aesthetic predictor:
`headhunter.plugins._aesthetic`.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import ClassVar

import pydantic
import torch

from headhunter.errors import ObjectiveError
from headhunter.contracts.objective import Images, check_prompts
from headhunter.plugins._clip import CLIP_L14, load_clip, rgb_images
from headhunter.plugins._weights import SMALL_FILES, HubObjective, _Params

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
HPS_MODEL = "adams-story/HPSv2-hf"
#: The paper's CLIP prompt for style searches, used when `clipscore` gets a `style`.
STYLE_TEMPLATE = "A photo depicts {style}, {prompt}"


class _PairScorer(HubObjective):
    """A CLIP model scoring (image, prompt) pairs: cosine, times logit_scale.exp() when `scaled`."""

    scaled: ClassVar[bool] = True

    def load(self) -> None:
        self.clip = load_clip(self.params.model, self.params.processor)

    def downloads(self) -> list[tuple[str, str]]:
        return [(self.params.model, ""), (self.params.processor, SMALL_FILES)]

    @torch.no_grad()
    def score(self, images: Images, prompts: Sequence[str]) -> torch.Tensor:
        x = rgb_images(images)
        texts = check_prompts(x, prompts)
        return self.clip.scaled_cosine(x, texts) if self.scaled else self.clip.cosine(x, texts)


class PickScore(_PairScorer):
    """PickScore v1: logit_scale.exp() x cos(image, prompt), about 18-23 on SD3 images (the paper's objective)."""

    name = "pickscore"

    class Params(_Params):
        model: str = pydantic.Field(PICKSCORE_MODEL, description="CLIP weights (Hub repo id or local folder)")
        processor: str = pydantic.Field(PICKSCORE_PROCESSOR, description="tokenizer + preprocessing repo")


class ClipScore(HubObjective):
    """CLIP score: logit_scale.exp() x cos(image, template(prompt)) = 100 cos for OpenAI CLIP ViT-L/14."""

    name = "clipscore"

    class Params(_Params):
        model: str = pydantic.Field(CLIP_L14, description="CLIP weights (Hub repo id or local folder)")
        processor: str | None = pydantic.Field(None, description="tokenizer + preprocessing repo (default: model)")
        template: str | None = pydantic.Field(
            None, description="text scored against the image; {prompt} (= {content}) and {style} are filled in"
        )
        style: str | None = pydantic.Field(None, description="fills {style}; default template becomes the paper's")

    def load(self) -> None:
        template = self.template
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        unknown = fields - {"prompt", "content", "style"}
        if unknown:
            raise ObjectiveError(f"clipscore template {template!r} uses {sorted(unknown)}; allowed: {{prompt}}, {{content}}, {{style}}")
        if "style" in fields and self.params.style is None:
            raise ObjectiveError(f"clipscore template {template!r} uses {{style}}; give style=...")
        self.clip = load_clip(self.params.model, self.params.processor or self.params.model)

    def downloads(self) -> list[tuple[str, str]]:
        processor = self.params.processor
        return [(self.params.model, "")] + ([(processor, SMALL_FILES)] if processor else [])

    @property
    def template(self) -> str:
        if self.params.template is not None:
            return self.params.template
        return STYLE_TEMPLATE if self.params.style is not None else "{prompt}"

    def texts(self, prompts: Sequence[str]) -> list[str]:
        return [self.template.format(prompt=p, content=p, style=self.params.style or "") for p in prompts]

    @torch.no_grad()
    def score(self, images: Images, prompts: Sequence[str]) -> torch.Tensor:
        x = rgb_images(images)
        return self.clip.scaled_cosine(x, self.texts(check_prompts(x, prompts)))


class HPSv2(_PairScorer):
    """HPS v2 (community transformers conversion): cos(image, prompt), about 0.2-0.3."""

    name = "hps"
    scaled = False

    class Params(_Params):
        model: str = pydantic.Field(HPS_MODEL, description="HPS v2 weights as a transformers CLIPModel")
        processor: str = pydantic.Field(PICKSCORE_PROCESSOR, description="tokenizer + preprocessing (OpenCLIP ViT-H-14)")
