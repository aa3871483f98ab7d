"""The digits data: scikit-learn's ``load_digits`` (1,797 real 8x8 handwritten digits, UCI).

Why 16x16 bilinear: SD3 patchifies with ``patch_size=2``; at 8x8 that leaves only 16 tokens, too few for
attention heads to specialise spatially. Upsampling to 16x16 keeps SD3's patch size and gives an 8x8 grid
of 64 image tokens. Bilinear (``align_corners=False``) rather than nearest: nearest makes every 2x2 patch a
constant block, so artefacts of guidance (blobs, stripes, grain) would hide inside patches; bilinear gives
smooth strokes in which they show. 32x32 would be 4x the tokens and about 4x the training time.

The split is fixed and seeded (``SPLIT_SEED``): ``N_HELDOUT`` images are held out and never seen by the
generator or the classifier; they are the reference set of FD-digits.

Prompts are the labels' text form: "0".."9", and "" (the null label, index 10) for unconditional samples.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from headhunter.errors import ModelError

IMAGE_SIZE = 16
SPLIT_SEED = 0
N_HELDOUT = 300
NUM_CLASSES = 10
_RAW_MAX = 16.0
NULL_PROMPT = ""
ALLOWED_PROMPTS: tuple[str, ...] = tuple(str(d) for d in range(NUM_CLASSES)) + (NULL_PROMPT,)


def _load_raw() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as float32 [N, 8, 8] in [0, 16] and int64 labels [N]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def upsample(images8: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Bilinearly resize [N, 1, 8, 8] images to [N, 1, size, size] (align_corners=False)."""
    return F.interpolate(images8, size=(size, size), mode="bilinear", align_corners=False)


def split_indices(n: int, seed: int = SPLIT_SEED, n_heldout: int = N_HELDOUT) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed permutation of ``range(n)`` cut into (train, held-out) index tensors."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_heldout:], perm[:n_heldout]


def load_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N, 1, 16, 16] in [-1, 1] and labels [N] of ``split`` ("train", "heldout" or "all")."""
    allowed = ("train", "heldout", "all")
    if split not in allowed:
        raise ValueError(f"Unknown split {split!r}; allowed: {', '.join(allowed)}")
    raw, labels = _load_raw()
    images = upsample(torch.from_numpy(raw)[:, None] / _RAW_MAX) * 2.0 - 1.0
    labels_t = torch.from_numpy(labels)
    if split == "all":
        return images, labels_t
    train_idx, held_idx = split_indices(len(labels_t))
    idx = train_idx if split == "train" else held_idx
    return images[idx].contiguous(), labels_t[idx].contiguous()


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Map model space [-1, 1] to image space [0, 1] (clamped)."""
    return ((images + 1.0) / 2.0).clamp(0.0, 1.0)


def from_unit(images: torch.Tensor) -> torch.Tensor:
    """Map image space [0, 1] to model space [-1, 1]."""
    return images * 2.0 - 1.0


def prompt_to_label(prompt: str) -> int:
    """"0".."9" -> 0..9 and "" -> 10 (the null label); anything else is a ModelError (a ValueError)."""
    if not isinstance(prompt, str) or prompt not in ALLOWED_PROMPTS:
        allowed = ", ".join(repr(p) for p in ALLOWED_PROMPTS)
        raise ModelError(f"Invalid prompt {prompt!r} for the digits model; allowed prompts: {allowed} "
                         "('' is unconditional)")
    return NUM_CLASSES if prompt == NULL_PROMPT else int(prompt)


def prompts_to_labels(prompts: str | list[str] | tuple[str, ...]) -> torch.Tensor:
    """Validate a prompt or list of prompts and return int64 labels [B]."""
    if not isinstance(prompts, (list, tuple)):
        prompts = [prompts]
    return torch.tensor([prompt_to_label(p) for p in prompts], dtype=torch.long)
