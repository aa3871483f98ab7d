"""The explicit reference: the attention map materialised in float64 and mixed row-wise with the target map.

Slow and memory-hungry on purpose (an N x N map per head): it is what the fast path in headhunter.engine.attention
is tested against, and shares none of its shortcuts. `A' = A + u r (T - A)` where r marks the query rows the
scope perturbs; the output is `A' V`.
"""

from __future__ import annotations

import math
import torch

from headhunter.contracts.adapter import TokenLayout
from headhunter.contracts.perturbation import Perturbation


def perturbed_rows(layout: TokenLayout, scope: str, perturbation: Perturbation) -> torch.Tensor:
    """float64 [S]: 1 on the query rows the scope perturbs, 0 elsewhere."""
    rows = torch.zeros(layout.seq_len, dtype=torch.float64)
    if scope == "joint" and perturbation.rows == "all":
        rows[:] = 1.0
    else:
        rows[layout.image_slice] = 1.0
    return rows


def pag_mask_bias(layout: TokenLayout) -> torch.Tensor:
    """float64 [S, S] additive mask of diffusers' PAGJointAttnProcessor2_0: image->image only on the diagonal."""
    bias = torch.zeros(layout.seq_len, layout.seq_len, dtype=torch.float64)
    img = torch.arange(layout.seq_len)[layout.image_slice]
    block = torch.full((len(img), len(img)), float("-inf"), dtype=torch.float64)
    block.fill_diagonal_(0.0)
    bias[img[:, None], img[None, :]] = block
    return bias


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    layout: TokenLayout,
    perturbation: Perturbation,
    scope: str,
) -> torch.Tensor:
    """Perturbed attention output [B, H, S, D] in float64 from q, k, v [B, H, S, D] and strengths u [B, H]."""
    q, k, v = q.double(), k.double(), v.double()
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    attn = logits.softmax(dim=-1)
    if scope == "pag_mask":
        target = (logits + pag_mask_bias(layout).to(q.device)).softmax(dim=-1)
        target_v = target @ v
    else:
        target_v = _target_values(q, k, v, layout, perturbation)
    rows = perturbed_rows(layout, scope, perturbation).to(q.device)
    weight = u.double()[:, :, None, None] * rows[None, None, :, None]
    if target_v is None:  # the target map itself is known: mix the maps, then multiply by V
        mixed = attn + weight * (perturbation.target_matrix(q, k, layout).double() - attn)
        return mixed @ v
    return attn @ v + weight * (target_v - attn @ v)


def _target_values(q, k, v, layout, perturbation) -> torch.Tensor | None:
    """None when the perturbation gives its target map explicitly; else T·V from `target` in float64."""
    if type(perturbation).target_matrix is not Perturbation.target_matrix:
        return None
    tv = perturbation.target(q, k, v, layout).double()
    if perturbation.rows == "image":
        full = torch.zeros_like(v)
        full[:, :, layout.image_slice] = tv
        return full
    return tv.expand_as(v)
