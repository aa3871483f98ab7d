"""Preference scorers on CLIP models: PickScore, CLIP score, LAION aesthetic, HPS v2.

Weights come from the Hugging Face Hub (or a local folder given in place of a repo id) through transformers
and safetensors (`torch.load(weights_only=True)` only for a plain `.pth` state dict); never
`trust_remote_code`. Each model loads once per process (`_CACHE`), when the objective is created, so a
missing download fails at once with the command that fetches it. Scoring runs on the images' device in the
images' floating dtype, one batched forward per call. Images are preprocessed in torch exactly as the
repo's `preprocessor_config.json` says (resize shortest side, bicubic, centre crop, normalise), which
matches CLIPImageProcessor to within one 8-bit step (PIL rounds to uint8; floats here are not rounded).
"""

from __future__ import annotations

import copy
import json
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import pydantic
import torch
import torch.nn.functional as F

from headhunter.errors import ObjectiveError
from headhunter.objective import Images, Objective, check_prompts
from headhunter.composite import format_leaf
from headhunter.plugins._image_stats import to_rgb

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
CLIP_L14 = "openai/clip-vit-large-patch14"
AESTHETIC_WEIGHTS = "RE-N-Y/laion-aesthetic"
AESTHETIC_FILENAME = "model.safetensors"
HPS_MODEL = "adams-story/HPSv2-hf"
#: The paper's CLIP prompt for style searches, used when `clipscore` gets a `style`.
STYLE_TEMPLATE = "A photo depicts {style}, {prompt}"
PREPROCESSOR_FILE = "preprocessor_config.json"

_CACHE: dict[tuple[Any, ...], Any] = {}


# ---------------------------------------------------------------- fetching

#: `--include` patterns that fetch only a repo's configs, tokenizer and preprocessing (no weights).
SMALL_FILES = '--include "*.json" "*.txt"'


def fetch_command(repo: str, include: str = "") -> str:
    return f"hf download {repo}" + (f" {include}" if include else "")


def missing_weights(repo: str, what: str, err: BaseException | str, include: str = "") -> ObjectiveError:
    """The error for files that are neither cached nor downloadable: names the repo and the fetch command."""
    if Path(repo).is_dir():
        return ObjectiveError(f"cannot load {what} from local folder {repo!r}: {err}")
    reason = err if isinstance(err, str) else type(err).__name__
    command = fetch_command(repo, include)
    return ObjectiveError(
        f"cannot load {what} from the Hugging Face Hub repo {repo!r}: not in the local cache and not "
        f"downloadable here ({reason}). Fetch it once while online with `{command}` (older huggingface_hub: "
        f"`huggingface-cli download {repo}{' ' + include if include else ''}`), or unset HF_HUB_OFFLINE to let it download."
    )


def _hub_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import HfHubHTTPError

    return (OSError, ValueError, HfHubHTTPError)


def resolve_file(repo: str, filename: str, revision: str | None = None, include: str = "") -> Path:
    """Path of `filename` in a local folder `repo`, or in the Hub repo `repo` (cache first, then download)."""
    if Path(repo).is_dir():
        path = Path(repo) / filename
        if not path.is_file():
            raise missing_weights(repo, filename, f"{path} does not exist")
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename, revision=revision))
    except _hub_errors() as err:
        raise missing_weights(repo, filename, err, include) from None


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file, or of a plain state dict read with `torch.load(weights_only=True)`."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # pickle refusing a non-tensor object: not a plain state dict
        raise ObjectiveError(f"{path} is not a plain state dict loadable with weights_only=True: {err}") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ObjectiveError(f"{path} does not hold a state dict of tensors")
    return dict(state)


def cached(key: tuple[Any, ...], load: Callable[[], Any]) -> Any:
    """`load()` once per process for each key."""
    if key not in _CACHE:
        _CACHE[key] = load()
    return _CACHE[key]


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
    path = resolve_file(repo, PREPROCESSOR_FILE, revision, include=include)
    return ClipPreprocess.from_config(json.loads(path.read_text()))


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
        except _hub_errors() as err:
            raise missing_weights(processor, "the CLIP tokenizer", err, small) from None
        try:
            clip = CLIPModel.from_pretrained(model, trust_remote_code=False)
        except _hub_errors() as err:
            raise missing_weights(model, "the CLIP model", err) from None
        return ClipBundle(clip.eval().requires_grad_(False), tokenizer, preprocess)

    return cached(("clip", model, processor), load)


# ---------------------------------------------------------------- objectives

class _Params(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")


class HubObjective(Objective):
    """Base of the weight-backed objectives: validated params, canonical `str()` of non-default params."""

    Params: ClassVar[type[_Params]]

    def __init__(self, **params: Any) -> None:
        try:
            self.params = self.Params(**params)
        except pydantic.ValidationError as err:
            allowed = ", ".join(f"{k} (default {f.default!r})" for k, f in self.Params.model_fields.items())
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '?'}: {e['msg']}" for e in err.errors())
            raise ObjectiveError(f"bad parameters for objective {self.name!r}: {problems}. Allowed: {allowed}") from None
        try:
            self.load()
        except ObjectiveError as err:
            commands = [fetch_command(repo, include) for repo, include in self.downloads() if not Path(repo).is_dir()]
            if "hf download" not in str(err) or len(commands) < 2:
                raise
            raise ObjectiveError(f"{err} Everything {self.name!r} needs: " + "; ".join(f"`{c}`" for c in commands)) from None

    def load(self) -> None:
        """Load (or fetch from the process cache) the weights; raises ObjectiveError naming the repo."""

    def downloads(self) -> list[tuple[str, str]]:
        """(repo, `--include` patterns or "") for every repo this objective reads."""
        return []

    def __str__(self) -> str:
        return format_leaf(self.name, self.params.model_dump(exclude_defaults=True))


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


# ---------------------------------------------------------------- LAION aesthetic

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
        except _hub_errors() as err:
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


PREFERENCE_OBJECTIVES: tuple[type[HubObjective], ...] = (PickScore, ClipScore, Aesthetic, HPSv2)
