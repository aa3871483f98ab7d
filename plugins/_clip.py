"""CLIP for the objectives: image preprocessing in torch, a CLIP model with its tokenizer (`ClipBundle`) scoring
(image, text) pairs by cosine, and CLIP configs.

Images are preprocessed exactly as the repo's `preprocessor_config.json` says (resize shortest side,
bicubic, centre crop, normalise), which matches CLIPImageProcessor to within one 8-bit step (PIL rounds
to uint8; floats here are not rounded). Scoring runs on the images' device in the images' floating dtype,
one batched forward per call.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from headhunter.errors import ObjectiveError
from headhunter.contracts.objective import Images
from headhunter.plugins._image_stats import to_rgb
from headhunter.plugins._weights import SMALL_FILES, cached, hub_errors, missing_weights, resolve_file

PREPROCESSOR_FILE = "preprocessor_config.json"
#: OpenAI CLIP ViT-L/14: CLIP score and the aesthetic predictor's image tower.
CLIP_L14 = "openai/clip-vit-large-patch14"


# ---------------------------------------------------------------- preprocessing

@dataclass(frozen=True)
class ClipPreprocess:
    """CLIPImageProcessor's pipeline on [0, 1] tensors: resize shortest side, centre crop, normalise."""

    shortest_edge: int = 224
    crop: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ClipPreprocess:
        size = config.get("size", 224)
        crop = config.get("crop_size", size)
        if isinstance(size, Mapping):
            if "shortest_edge" not in size:
                raise ObjectiveError(f"preprocessor size {dict(size)} not supported; expected {{'shortest_edge': N}}")
            size = size["shortest_edge"]
        if isinstance(crop, Mapping):
            crop = (crop["height"], crop["width"])
        elif isinstance(crop, int):
            crop = (crop, crop)
        resample = config.get("resample", 3)
        if resample != 3:
            raise ObjectiveError(f"preprocessor resample={resample} not supported; only 3 (bicubic) is")
        return cls(int(size), (int(crop[0]), int(crop[1])), tuple(config["image_mean"]), tuple(config["image_std"]))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize: shortest side -> shortest_edge, long side truncated like transformers."""
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.shortest_edge * long / short)
        return (new_long, self.shortest_edge) if width <= height else (self.shortest_edge, new_long)

    def __call__(self, images: Images) -> torch.Tensor:
        x = rgb_images(images)
        dtype = x.dtype
        x = x.float()
        size = self.output_size(*x.shape[-2:])
        # Two separable passes, width then height, clamped in between: PIL's order and its 8-bit range.
        for target in ((x.shape[-2], size[1]), size):
            if target != tuple(x.shape[-2:]):
                x = F.interpolate(x, size=target, mode="bicubic", align_corners=False, antialias=True).clamp(0.0, 1.0)
        top = (size[0] - self.crop[0]) // 2
        left = (size[1] - self.crop[1]) // 2
        if top < 0 or left < 0:
            raise ObjectiveError(f"images resized to {size} are smaller than the crop {self.crop}")
        x = x[..., top : top + self.crop[0], left : left + self.crop[1]]
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(dtype)


def rgb_images(images: Images) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1], keeping a float tensor's device and dtype; gray is repeated to RGB."""
    return to_rgb(images, keep_dtype=True)


def load_preprocess(repo: str, revision: str | None = None, include: str = SMALL_FILES) -> ClipPreprocess:
    from headhunter.format.files import read_json

    path = resolve_file(repo, PREPROCESSOR_FILE, revision, include=include)
    config = read_json(path, max_bytes=1 << 20, error=ObjectiveError, what="preprocessor config")
    if not isinstance(config, Mapping):
        raise ObjectiveError(f"preprocessor config {path} must be a JSON object")
    try:
        return ClipPreprocess.from_config(config)
    except (KeyError, TypeError, ValueError, IndexError) as err:  # a config from the Hub that is not CLIP's
        raise ObjectiveError(f"preprocessor config {path} of {repo!r} is not a CLIP preprocessor config: "
                             f"{type(err).__name__}: {err}") from None


# ---------------------------------------------------------------- CLIP bundles

def placed(module: torch.nn.Module, copies: dict[tuple[Any, ...], torch.nn.Module], like: torch.Tensor) -> torch.nn.Module:
    """`module` on the device and floating dtype of `like`: the loaded master if it already is, else a copy.

    Copies are kept (one per device and dtype), so the master is never cast back and forth and loses nothing.
    """
    dtype = like.dtype if like.is_floating_point() else torch.float32
    master = next(module.parameters())
    if master.device == like.device and master.dtype == dtype:
        return module
    key = (str(like.device), dtype)
    if key not in copies:
        copies[key] = copy.deepcopy(module).to(device=like.device, dtype=dtype)
    return copies[key]


@dataclass
class ClipBundle:
    """A CLIP model with its tokenizer and image preprocessing, loaded once per process."""

    model: Any  # transformers.CLIPModel, as loaded (CPU, float32)
    tokenizer: Any
    preprocess: ClipPreprocess
    copies: dict[tuple[Any, ...], Any] = field(default_factory=dict)

    def model_for(self, like: torch.Tensor) -> Any:
        return placed(self.model, self.copies, like)

    def cosine(self, images: Images, texts: Sequence[str]) -> torch.Tensor:
        """cos(image_i, text_i) for each pair, float32 [B]: L2-normalised projected CLIP embeddings."""
        pixels = self.preprocess(images)
        model = self.model_for(pixels)
        img = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        max_length = model.config.text_config.max_position_embeddings
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        txt = model.text_projection(
            model.text_model(
                input_ids=tokens["input_ids"].to(pixels.device),
                attention_mask=tokens["attention_mask"].to(pixels.device),
            ).pooler_output
        )
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        return (img * txt).sum(dim=-1).float()

    def scaled_cosine(self, images: Images, texts: Sequence[str]) -> torch.Tensor:
        """exp(logit_scale) x cos(image_i, text_i), float32 [B]; the scale is the loaded (float32) model's."""
        cos = self.cosine(images, texts)
        return self.model.logit_scale.detach().exp().float().to(cos.device) * cos


def load_clip(model: str, processor: str) -> ClipBundle:
    """A CLIPModel from `model` with the tokenizer and preprocessing of `processor` (cached per process)."""

    def load() -> ClipBundle:
        from transformers import CLIPModel, CLIPTokenizer

        small = SMALL_FILES if processor != model else ""  # one repo for both: fetch all of it
        preprocess = load_preprocess(processor, include=small)
        try:
            tokenizer = CLIPTokenizer.from_pretrained(processor)
        except hub_errors() as err:
            raise missing_weights(processor, "the CLIP tokenizer", err, small) from None
        try:
            clip = CLIPModel.from_pretrained(model, trust_remote_code=False)
        except hub_errors() as err:
            raise missing_weights(model, "the CLIP model", err) from None
        return ClipBundle(clip.eval().requires_grad_(False), tokenizer, preprocess)

    return cached(("clip", model, processor), load)


def vision_config(repo: str) -> Any:
    """The CLIPVisionConfig of `repo` (a full CLIP or a vision-only config), with CLIP's projection size."""
    from transformers import AutoConfig, CLIPVisionConfig

    config = AutoConfig.from_pretrained(repo, trust_remote_code=False)
    if isinstance(config, CLIPVisionConfig):
        return config
    vision = getattr(config, "vision_config", None)
    if not isinstance(vision, CLIPVisionConfig):
        raise ObjectiveError(f"{repo} is not a CLIP model (config type {type(config).__name__})")
    vision.projection_dim = config.projection_dim  # CLIPModel sizes visual_projection from the top level
    return vision
