"""Objective: scores images (with their prompts) -> one float per image, higher is better.

HeadHunter climbs an objective; objective plugins register factories `factory(**params) -> Objective`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch

from headhunter.errors import ObjectiveError, ObjectiveOutputError

#: Images as a float tensor [B, C, H, W] in [0, 1], or a list of PIL images.
Images = Union[torch.Tensor, Sequence[Any]]


class Objective(ABC):
    """Scores a batch of images; subclasses implement `score`."""

    #: The registered name (set by subclasses).
    name: str = "objective"

    @abstractmethod
    def score(self, images: Images, prompts: Sequence[str]) -> torch.Tensor:
        """float32 tensor [B] of scores, one per image, higher is better."""

    def __call__(self, images: Images, prompts: Sequence[str]) -> torch.Tensor:
        """`score`, checked where a plugin's output enters: one finite real score per image, a tensor [B]
        (ObjectiveOutputError, a SearchError, naming the objective, the expected and the returned count or the
        images whose score is NaN/inf)."""
        if isinstance(images, torch.Tensor) and images.ndim == 5:
            return self._score_videos(images, prompts)
        return check_scores(self.score(images, prompts), self.name, len(images))

    def _score_videos(self, videos: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Videos [B, F, C, H, W] (e.g. Wan's `output_type="pt"`): each frame is scored as an image with its
        video's prompt, and a video's score is the mean of its frames' scores -> [B]."""
        b, f = videos.shape[:2]
        per_video = check_prompts(videos, prompts)
        scores = self.score(videos.flatten(0, 1), [p for p in per_video for _ in range(f)])
        scores = check_scores(scores, self.name, b * f, what=f"frames ({b} videos x {f} frames)")
        return scores.view(b, f).mean(dim=1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def check_scores(scores: Any, name: str, expected: int, what: str = "images") -> torch.Tensor:
    """An objective's output, checked: a real tensor of shape [expected], every value finite. Raises
    ObjectiveOutputError (an ObjectiveError and a SearchError) naming the objective and what is wrong."""
    if not isinstance(scores, torch.Tensor):
        raise ObjectiveOutputError(f"objective {name!r} returned {type(scores).__name__}; an objective returns a "
                                   f"float tensor of shape [{expected}], one score per image")
    if scores.dtype == torch.bool or scores.is_complex():
        raise ObjectiveOutputError(f"objective {name!r} returned {scores.dtype} scores; scores are real numbers")
    if tuple(scores.shape) != (expected,):
        got = scores.numel() if scores.ndim == 1 else f"shape {list(scores.shape)}"
        raise ObjectiveOutputError(f"objective {name!r} returned {got} scores for {expected} {what}; expected "
                                   f"one per image, shape [{expected}]")
    finite = torch.isfinite(scores)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        first = scores[bad[0]].item()
        which = "every one of them" if len(bad) == expected else f"{what} {', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''}"
        raise ObjectiveOutputError(f"objective {name!r} returned {first} for {len(bad)} of {expected} {what} "
                                   f"({which}); scores must be finite numbers")
    return scores


def as_tensor_images(images: Images) -> torch.Tensor:
    """Images as a float32 tensor [B, C, H, W] in [0, 1]; accepts tensors in [0, 1] and PIL images."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ObjectiveError(f"images must be [B, C, H, W], got shape {list(images.shape)}")
        return images.float()
    arrays = []
    for image in images:
        array = np.asarray(image, dtype=np.float32) / 255.0
        if array.ndim == 2:
            array = array[:, :, None]
        arrays.append(torch.from_numpy(array).permute(2, 0, 1))
    if not arrays:
        raise ObjectiveError("no images to score")
    return torch.stack(arrays)


def check_prompts(images: torch.Tensor, prompts: Sequence[str]) -> list[str]:
    """One prompt per image: a single prompt is broadcast; another count is an error naming both."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if len(prompts) == 1 and images.shape[0] > 1:
        return prompts * images.shape[0]
    if len(prompts) != images.shape[0]:
        raise ObjectiveError(f"{len(prompts)} prompts for {images.shape[0]} images; give one per image or one for all")
    return prompts
