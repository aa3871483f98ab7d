"""Built-in perturbations: identity (PAG), softpag, uniform (UG), blur (SEG) and drop.

Each computes only the target T·V for the selected heads (paper §4.2 and App. C, "unified view"); the
engine mixes `O + u (T·V - O)` per sample and head on the rows the scope selects. `target_matrix` spells
the same target out as an explicit map for the float64 reference the tests compare against. Imports torch;
registered, without being imported, by `headhunter.plugins.perturbations`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from headhunter.contracts.adapter import TokenLayout
from headhunter.errors import ModelError
from headhunter.contracts.perturbation import Perturbation


class SoftPAG(Perturbation):
    """Identity target T = I (T·V = V): each selected head's output moves toward its own values by u."""

    name = "softpag"
    row_local = True
    scopes = ("joint", "image", "pag_mask")

    def target(self, q, k, v, layout):
        return v

    def target_matrix(self, q, k, layout):
        B, H, S, _ = q.shape
        return torch.eye(S, dtype=q.dtype, device=q.device).expand(B, H, S, S)


class Identity(SoftPAG):
    """PAG: the identity target at full strength; any non-zero strength acts as u = 1."""

    name = "identity"

    def strengths(self, u):
        return (u != 0).to(u.dtype)


class Uniform(Perturbation):
    """Uniform guidance (UG, Eq. 8): T = 1/N, so every row's T·V is the mean of all N values."""

    name = "uniform"

    def target(self, q, k, v, layout):
        return v.mean(dim=-2, keepdim=True).expand_as(v)

    def target_matrix(self, q, k, layout):
        B, H, S, _ = q.shape
        return torch.full((B, H, S, S), 1.0 / S, dtype=q.dtype, device=q.device)


class Drop(Perturbation):
    """T = 0: the head's output is scaled by 1 - u (u = 1 removes the head)."""

    name = "drop"
    row_local = True

    def target(self, q, k, v, layout):
        return v.new_zeros(()).expand_as(v)

    def target_matrix(self, q, k, layout):
        B, H, S, _ = q.shape
        return q.new_zeros(()).expand(B, H, S, S)


class BlurParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sigma: float = Field(
        default=10.0, gt=0, description="Gaussian width in image tokens (latent patches); inf = the mean query"
    )
    temporal_sigma: float = Field(
        default=0.0, ge=0,
        description="Gaussian width across video frames (latent frames; video adapters such as wan): 0 = each "
        "frame blurred on its own, inf = averaged over all frames; no effect on images",
    )
    mean_over: Literal["image", "all"] = Field(
        default="image",
        description="with sigma=inf: average the image queries (image rows perturbed) or all N queries, "
        "text included, for every row (the paper's MMDiT SEG, Eq. 10)",
    )

    @model_validator(mode="after")
    def _all_needs_inf(self) -> BlurParams:
        if self.mean_over == "all" and not math.isinf(self.sigma):
            raise ValueError(f"mean_over='all' needs sigma=inf (got sigma={self.sigma}); a finite blur is image-only")
        return self


class Blur(Perturbation):
    """SEG (Eqs. 9-10): T = softmax(Q~ K^T / sqrt(d)) with Q~ the image-token queries blurred by a Gaussian
    of width sigma on the image grid; sigma = inf gives the mean query. Text-token queries are not blurred
    (text has no grid), so text rows stay unperturbed: `joint` and `image` scopes coincide, unless
    `mean_over="all"`, where every row takes the mean of all N queries.

    Video (`layout.frames > 1`, frame-major `frames x rows x cols` tokens): the blur is separable in
    (frame, row, col) with `sigma` on rows and columns and `temporal_sigma` across frames (0: frames are
    blurred independently, the image SEG per frame; inf: the mean over frames). `sigma = inf` then gives
    one mean query per frame (blurred in time by `temporal_sigma`), broadcast over that frame's rows."""

    name = "blur"
    Params = BlurParams

    @property
    def rows(self):  # type: ignore[override]
        return "all" if self.params.mean_over == "all" else "image"

    @property
    def heavy(self):  # type: ignore[override]
        return not math.isinf(self.params.sigma)

    @property
    def needs_grid(self):  # type: ignore[override]
        return not math.isinf(self.params.sigma)

    def target(self, q, k, v, layout):
        if self.params.mean_over == "all":
            q_mean = q.mean(dim=-2, keepdim=True)
            return F.scaled_dot_product_attention(q_mean, k, v).expand_as(v)
        q_img = q[:, :, layout.image_slice]
        frames = layout.frames
        if math.isinf(self.params.sigma):
            if frames == 1 or math.isinf(self.params.temporal_sigma):
                out = F.scaled_dot_product_attention(q_img.mean(dim=-2, keepdim=True), k, v)
                return out.expand(-1, -1, layout.image_len, -1)
            # one mean query per frame, blurred across frames, broadcast over the frame's tokens
            B, H, n, D = q_img.shape
            per_frame = _check_frames(layout, self.name)
            means = self._blur_frames(q_img.reshape(B, H, frames, per_frame, D).mean(dim=3))
            out = F.scaled_dot_product_attention(means, k, v)
            return out[:, :, :, None].expand(B, H, frames, per_frame, D).reshape(B, H, n, D)
        return F.scaled_dot_product_attention(self._blur(q_img, layout), k, v)

    def _blur(self, q_img: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        rows, cols = _grid(layout, self.name)
        B, H, _, D = q_img.shape
        g_rows = gaussian_matrix(rows, self.params.sigma, q_img.device, q_img.dtype)
        g_cols = gaussian_matrix(cols, self.params.sigma, q_img.device, q_img.dtype)
        if layout.frames == 1:
            grid = q_img.reshape(B, H, rows, cols, D)
            blurred = torch.einsum("ij,bhjcd->bhicd", g_rows, grid)
            blurred = torch.einsum("kc,bhicd->bhikd", g_cols, blurred)
            return blurred.reshape(B, H, rows * cols, D)
        grid = q_img.reshape(B, H, layout.frames, rows, cols, D)
        blurred = torch.einsum("ij,bhfjcd->bhficd", g_rows, grid)
        blurred = torch.einsum("kc,bhficd->bhfikd", g_cols, blurred)
        blurred = self._blur_frames(blurred)
        return blurred.reshape(B, H, layout.image_len, D)

    def _blur_frames(self, x: torch.Tensor) -> torch.Tensor:
        """Blur `x` [B, H, frames, ...] across frames with `temporal_sigma` (0: unchanged)."""
        if self.params.temporal_sigma == 0:
            return x
        g_t = gaussian_matrix(x.shape[2], self.params.temporal_sigma, x.device, x.dtype)
        return torch.einsum("gf,bhf...->bhg...", g_t, x)

    def target_matrix(self, q, k, layout):
        scale = 1.0 / math.sqrt(q.shape[-1])
        if self.params.mean_over == "all":
            q_mean = q.mean(dim=-2, keepdim=True).expand_as(q)
            return (q_mean @ k.transpose(-1, -2) * scale).softmax(dim=-1)
        img = layout.image_slice
        n = layout.image_len
        index = torch.arange(n, dtype=q.dtype, device=q.device)
        if math.isinf(self.params.sigma):
            weights = torch.ones((n, n), dtype=q.dtype, device=q.device)
        else:
            rows, cols = _grid(layout, self.name)
            r = (index % (rows * cols)) // cols
            c = index % cols
            dist2 = (r[:, None] - r[None, :]) ** 2 + (c[:, None] - c[None, :]) ** 2
            weights = torch.exp(-dist2 / (2 * self.params.sigma**2))
        if layout.frames > 1 and not math.isinf(self.params.temporal_sigma):
            f = index // _check_frames(layout, self.name)
            dt2 = (f[:, None] - f[None, :]) ** 2
            if self.params.temporal_sigma == 0:
                weights = weights * (dt2 == 0)
            else:
                weights = weights * torch.exp(-dt2 / (2 * self.params.temporal_sigma**2))
        weights = weights / weights.sum(dim=-1, keepdim=True)
        q_target = q.clone()
        q_target[:, :, img] = weights @ q[:, :, img]
        return (q_target @ k.transpose(-1, -2) * scale).softmax(dim=-1)


_KERNELS: dict[tuple, torch.Tensor] = {}


def gaussian_matrix(n: int, sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[n, n] row-normalised Gaussian weights exp(-(i-j)^2 / 2 sigma^2): a blur along one grid axis whose
    border rows are renormalised (not reflect-padded), so sigma -> inf tends to the mean."""
    key = (n, float(sigma), str(device), dtype)
    kernel = _KERNELS.get(key)
    if kernel is None:
        pos = torch.arange(n, dtype=torch.float64)
        weights = torch.exp(-((pos[:, None] - pos[None, :]) ** 2) / (2 * float(sigma) ** 2))
        kernel = (weights / weights.sum(dim=-1, keepdim=True)).to(device=device, dtype=dtype)
        if len(_KERNELS) > 64:
            _KERNELS.clear()
        _KERNELS[key] = kernel
    return kernel


def _grid(layout: TokenLayout, name: str) -> tuple[int, int]:
    if layout.grid is None or layout.frames * layout.grid[0] * layout.grid[1] != layout.image_len:
        raise ModelError(
            f"perturbation {name!r} needs the image grid, but the adapter reported grid={layout.grid} "
            f"(frames={layout.frames}) for {layout.image_len} image tokens; use sigma=inf (mean query) or an "
            "adapter that reports the grid"
        )
    return layout.grid


def _check_frames(layout: TokenLayout, name: str) -> int:
    """Image tokens per frame; ModelError when the frame count does not divide the image tokens."""
    if layout.frames < 1 or layout.image_len % layout.frames:
        raise ModelError(
            f"perturbation {name!r}: {layout.image_len} image tokens do not split into frames={layout.frames}"
        )
    return layout.image_len // layout.frames


BUILTIN_PERTURBATIONS: tuple[type[Perturbation], ...] = (Identity, SoftPAG, Uniform, Blur, Drop)
