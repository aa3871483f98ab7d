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
from headhunter.errors import ModelError


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
        if layout.ref_len:
            raise ModelError(f"scope='pag_mask' is not defined with {layout.ref_len} reference-image tokens; use "
                             "scope='image' or 'joint'")
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


def materialized_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: torch.Tensor | None = None,
    scale: float | None = None, is_causal: bool = False,
) -> torch.Tensor:
    """float64 `softmax(q k^T * scale + mask) v` [B, H, Sq, D] from q [B, H, Sq, D] and k, v [B, H, Sk, D],
    with a bool (True = attend), additive, or flex `BlockMask` mask broadcastable to [B, H, Sq, Sk] (2-D masks
    are [B, Sk] key masks, 3-D ones [B, Sq, Sk]) and a causal mask aligned at the top-left (SDPA's); a row with
    every key masked is 0."""
    qd, kd, vd = q.double(), k.double(), v.double()
    s = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    logits = qd @ kd.transpose(-1, -2) * s
    if mask is not None and type(mask).__name__ == "BlockMask":  # flex attention: materialise its mask_mod
        from torch.nn.attention.flex_attention import create_mask

        mask = create_mask(mask.mask_mod, q.shape[0], 1, q.shape[2], k.shape[2], device=q.device)
    if mask is not None:
        m = mask
        if m.ndim == 2:
            m = m[:, None, None, :]
        elif m.ndim == 3:
            m = m[:, None]
        logits = logits.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else logits + m.double()
    if is_causal:
        causal = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
        logits = logits.masked_fill(~causal, float("-inf"))
    # a query row whose keys are all masked (HunyuanVideo-1.5 masks its unused condition rows entirely) gets 0,
    # as torch's SDPA gives it, instead of softmax's NaN
    return torch.nan_to_num(logits.softmax(dim=-1), nan=0.0) @ vd


def reference_mix(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, u: torch.Tensor, layout: TokenLayout,
    perturbation: Perturbation, scope: str, *, mask: torch.Tensor | None = None, scale: float | None = None,
    is_causal: bool = False, rows: tuple[int, int] | None = None, key_start: int = 0,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """The declared-DiT reference [B, H, Sq, D] float64: the call's own attention, materialised with its mask
    and scale (`materialized_attention`), mixed on the query rows `rows = (start, stop)` (the layout's text and
    image span; others keep O) with the target computed from the span's queries and the keys
    `key_start + start .. key_start + stop` (`layout` describes the span): `O + u r (T·V - O)`; `keep`: bool
    [span] rows inside the span that keep O (padding between the segments).
    q: [B, H, Sq, D]; k, v: [B, H, Sk, D] with the query heads (GQA expanded); u: [B, H]."""
    o64 = materialized_attention(q, k, v, mask=mask, scale=scale, is_causal=is_causal)
    start, stop = rows if rows is not None else (0, q.shape[2])
    if stop <= start:
        return o64
    ks, ke = key_start + start, key_start + stop
    qs, kss, vss = q[:, :, start:stop].double(), k[:, :, ks:ke].double(), v[:, :, ks:ke].double()
    o_span = o64[:, :, start:stop]
    if scope == "pag_mask":
        logits = qs @ kss.transpose(-1, -2) / math.sqrt(q.shape[-1])
        target_v = (logits + pag_mask_bias(layout).to(q.device)).softmax(dim=-1) @ vss
    else:
        target_v = _target_values(qs, kss, vss, layout, perturbation)
        if target_v is None:
            target_v = perturbation.target_matrix(qs, kss, layout).double() @ vss
    r = perturbed_rows(layout, scope, perturbation).to(q.device)
    if keep is not None:
        r = r * (~keep).to(device=q.device, dtype=torch.float64)
    weight = u.double()[:, :, None, None] * r[None, None, :, None]
    out = o64.clone()
    out[:, :, start:stop] = o_span + weight * (target_v - o_span)
    return out
