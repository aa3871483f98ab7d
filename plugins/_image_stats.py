"""Offline image objectives: image statistics with a direction, no weights, any device, any model.

All take images as a float tensor [B, C, H, W] in [0, 1] (or PIL images) and return float32 [B].
Channels: C = 3 is RGB, C = 4 is RGBA (alpha ignored), C = 1 (or 2, gray + alpha) is gray and is read as
R = G = B = the gray level, so chroma-based scores (saturation, colorfulness, redness, warmth) are exactly 0
on gray images. Luma Y is ITU-R BT.601 (the weights PIL's `convert("L")` uses).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, Callable, ClassVar

import pydantic
import torch
import torch.nn.functional as F

from headhunter.errors import ObjectiveError
from headhunter.contracts.objective import Images, Objective, as_tensor_images
from headhunter.format.schema import plugin_params
from headhunter.objective.composite import format_leaf

#: ITU-R BT.601 luma weights (PIL's "L" conversion).
LUMA_601 = (0.299, 0.587, 0.114)
#: 4-neighbour Laplacian kernel used by the sharpness objective.
LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))


def to_rgb(images: Images, keep_dtype: bool = False) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1]: gray (C = 1, 2) repeated to R = G = B, alpha (C = 2, 4) dropped.

    Float tensors keep their device (and, with `keep_dtype`, their dtype); PIL images become float32.
    Integer tensors and values far outside [0, 1] (e.g. a VAE's [-1, 1]) are errors, not guesses.
    """
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ObjectiveError(f"images must be [B, C, H, W], got shape {list(images.shape)}")
        if not images.is_floating_point():
            raise ObjectiveError(f"images tensor has dtype {images.dtype}; give floats in [0, 1] (e.g. images.float() / 255)")
        if images.numel():
            lo, hi = (v.item() for v in torch.aminmax(images.detach()))
            if lo < -0.01 or hi > 1.01:
                raise ObjectiveError(
                    f"image values span [{lo:.3g}, {hi:.3g}]; objectives take [0, 1] (from [-1, 1] use (x + 1) / 2)"
                )
        x = images if keep_dtype else images.float()
    else:
        x = as_tensor_images(images)
    channels = x.shape[1]
    if channels in (1, 2):
        return x[:, :1].expand(-1, 3, -1, -1)
    if channels in (3, 4):
        return x[:, :3]
    raise ObjectiveError(f"images have {channels} channels; allowed: 1 (gray), 2 (gray+alpha), 3 (RGB), 4 (RGBA)")


def luma(rgb: torch.Tensor) -> torch.Tensor:
    """Y = 0.299 R + 0.587 G + 0.114 B, [B, H, W]."""
    r, g, b = rgb.unbind(1)
    return LUMA_601[0] * r + LUMA_601[1] * g + LUMA_601[2] * b


def brightness(rgb: torch.Tensor) -> torch.Tensor:
    """Mean luma, in [0, 1]."""
    return luma(rgb).mean(dim=(1, 2))


def rms_contrast(rgb: torch.Tensor) -> torch.Tensor:
    """Standard deviation of luma over the pixels (RMS contrast, population std), in [0, 0.5]."""
    return luma(rgb).flatten(1).std(dim=1, unbiased=False)


def hsv_saturation(rgb: torch.Tensor) -> torch.Tensor:
    """Mean HSV saturation (max - min) / max per pixel (0 where max = 0), in [0, 1]."""
    hi = rgb.amax(dim=1)
    lo = rgb.amin(dim=1)
    sat = torch.where(hi > 0, (hi - lo) / hi.clamp_min(1e-12), torch.zeros_like(hi))
    return sat.mean(dim=(1, 2))


def hasler_susstrunk(rgb: torch.Tensor) -> torch.Tensor:
    """Colorfulness M = sqrt(sd_rg^2 + sd_yb^2) + 0.3 sqrt(mu_rg^2 + mu_yb^2) on the 0-255 scale.

    Hasler & Suesstrunk (2003), rg = R - G, yb = (R + G) / 2 - B; population statistics over pixels.
    0 for gray images; their scale: 15 slightly, 33 moderately, 45 averagely, 59 quite, 82 highly,
    109 extremely colourful.
    """
    x = rgb * 255.0
    r, g, b = x.unbind(1)
    rg = (r - g).flatten(1)
    yb = (0.5 * (r + g) - b).flatten(1)
    sd = torch.sqrt(rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False))
    mu = torch.sqrt(rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2)
    return sd + 0.3 * mu


def laplacian_variance(rgb: torch.Tensor) -> torch.Tensor:
    """Variance of the 4-neighbour Laplacian of luma (valid 3x3 convolution, no padding), in [0, 16]."""
    y = luma(rgb).unsqueeze(1)
    if y.shape[-1] < 3 or y.shape[-2] < 3:
        raise ObjectiveError(f"sharpness needs images of at least 3x3 pixels, got {y.shape[-2]}x{y.shape[-1]}")
    kernel = torch.tensor(LAPLACIAN, dtype=y.dtype, device=y.device).view(1, 1, 3, 3)
    lap = F.conv2d(y, kernel)
    return lap.flatten(1).var(dim=1, unbiased=False)


def redness(rgb: torch.Tensor) -> torch.Tensor:
    """Mean of R - (G + B) / 2, in [-1, 1]: 1 pure red, 0 any gray, -1 pure cyan."""
    r, g, b = rgb.unbind(1)
    return (r - 0.5 * (g + b)).mean(dim=(1, 2))


def warmth(rgb: torch.Tensor) -> torch.Tensor:
    """Mean of R - B, in [-1, 1]: positive warm (orange, golden), 0 gray, negative cool (blue)."""
    r, _, b = rgb.unbind(1)
    return (r - b).mean(dim=(1, 2))


def colour_closeness(rgb: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean_pixels ||rgb - target||_2 / sqrt(3), in [0, 1]: 1 when every pixel is the target colour."""
    dist = (rgb - target.to(rgb).view(1, 3, 1, 1)).square().sum(dim=1).sqrt()
    return 1.0 - dist.mean(dim=(1, 2)) / math.sqrt(3.0)


_NO_PARAMS = pydantic.ConfigDict(extra="forbid")


class StatObjective(Objective):
    """An objective that is one image statistic (a pure function of RGB pixels); prompts are ignored."""

    stat: ClassVar[Callable[[torch.Tensor], torch.Tensor]]
    sign: ClassVar[float] = 1.0

    def __init__(self, **params: Any) -> None:
        if params:
            raise ObjectiveError(f"objective {self.name!r} takes no parameters; got {', '.join(sorted(params))}")

    def score(self, images: Images, prompts: Sequence[str]) -> torch.Tensor:
        values = type(self).stat(to_rgb(images))
        return (values if self.sign > 0 else 1.0 - values).float()

    def __str__(self) -> str:
        return format_leaf(self.name, {})


def _stat(name: str, fn: Callable[[torch.Tensor], torch.Tensor], doc: str, inverted: bool = False) -> type[StatObjective]:
    cls = type(name.capitalize() + "Objective", (StatObjective,), {"name": name, "stat": staticmethod(fn), "__doc__": doc})
    cls.sign = -1.0 if inverted else 1.0
    return cls


BrightnessObjective = _stat("brightness", brightness, "Mean luma in [0, 1]; higher is brighter.")
DarknessObjective = _stat("darkness", brightness, "1 - mean luma in [0, 1]; higher is darker.", inverted=True)
ContrastObjective = _stat("contrast", rms_contrast, "RMS contrast (std of luma) in [0, 0.5].")
SaturationObjective = _stat("saturation", hsv_saturation, "Mean HSV saturation in [0, 1]; 0 on gray.")
ColorfulnessObjective = _stat("colorfulness", hasler_susstrunk, "Hasler-Suesstrunk colorfulness, 0-255 scale; 0 on gray.")
SharpnessObjective = _stat("sharpness", laplacian_variance, "Variance of the Laplacian of luma, in [0, 16].")
RednessObjective = _stat("redness", redness, "Mean R - (G + B)/2 in [-1, 1]; 0 on gray.")
WarmthObjective = _stat("warmth", warmth, "Mean R - B in [-1, 1]; warm positive, cool negative, 0 on gray.")

_HEX = re.compile(r"#?([0-9a-fA-F]{6})")
_NAMED = {
    "red": "#ff0000", "green": "#00ff00", "blue": "#0000ff", "yellow": "#ffff00", "cyan": "#00ffff",
    "magenta": "#ff00ff", "white": "#ffffff", "black": "#000000", "orange": "#ff8000", "gray": "#808080",
}


def parse_colour(text: str) -> tuple[float, float, float]:
    """'#rrggbb' (or 'rrggbb', or a basic colour name) as RGB in [0, 1]."""
    match = _HEX.fullmatch(_NAMED.get(str(text).strip().lower(), str(text).strip()))
    if match is None:
        raise ObjectiveError(
            f"colour {text!r} not understood; give '#rrggbb' (e.g. '#ff0000') or one of: {', '.join(sorted(_NAMED))}"
        )
    hex6 = match.group(1)
    return tuple(int(hex6[i : i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]


class ColorObjective(Objective):
    """Closeness of every pixel to a target colour: 1 - mean ||rgb - target|| / sqrt(3), in [0, 1]."""

    name = "color"

    class Params(pydantic.BaseModel):
        model_config = _NO_PARAMS
        target: str = pydantic.Field(description="target colour, '#rrggbb' or a basic colour name")

    def __init__(self, **params: Any) -> None:
        self.params = plugin_params(self.Params, ObjectiveError, "objective 'color'", params)
        self.rgb = torch.tensor(parse_colour(self.params.target))

    def score(self, images: Images, prompts: Sequence[str]) -> torch.Tensor:
        return colour_closeness(to_rgb(images), self.rgb).float()

    def __str__(self) -> str:
        return format_leaf(self.name, {"target": self.params.target})


STAT_OBJECTIVES: tuple[type[Objective], ...] = (
    BrightnessObjective, DarknessObjective, ContrastObjective, SaturationObjective, ColorfulnessObjective,
    SharpnessObjective, RednessObjective, WarmthObjective, ColorObjective,
)
