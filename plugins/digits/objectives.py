"""Objectives for the digits model, scored by the shipped classifier (trained on the training split only).

For a digit prompt ("0".."9") each objective looks at the prompted class; for the unconditional prompt ""
it looks at the most likely class (how clearly the sample is *some* digit). All return float32 [B],
higher is better.

- ``digit-logprob``: log p(prompted class) (or max log p). Does not saturate near 1 the way the
  probability does, so a search can still rank good heads; the recommended default.
- ``digit-confidence``: p(prompted class) (or max p), in [0, 1].
- ``digit-accuracy``: 1.0 if the argmax is the prompted class (for "": if max p > 0.5), else 0.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from headhunter.errors import ModelError, ObjectiveError
from headhunter.contracts.objective import Images, Objective, as_tensor_images, check_prompts

from .classifier import DigitClassifier, as_batch, load_classifier
from .data import prompt_to_label

UNCONDITIONAL_ACCURACY_THRESHOLD = 0.5


class DigitObjective(Objective):
    """Shared part: load the classifier once, turn images + prompts into log-probabilities and labels."""

    name = "digit"

    def __init__(self, weights_dir: str | Path | None = None, device: str | torch.device | None = None):
        self.classifier: DigitClassifier = load_classifier(weights_dir)
        self.device = device

    def _log_probs(self, images: Images, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(log_softmax [B, 10], labels [B] with -1 for the unconditional prompt "")."""
        x = as_tensor_images(images)
        prompts = check_prompts(x, prompts)
        try:
            labels = [prompt_to_label(p) for p in prompts]
        except ModelError as err:
            raise ObjectiveError(f"objective {self.name!r}: {err}") from None
        device = self.device or x.device
        self.classifier.to(device)
        with torch.no_grad():
            log_p = torch.log_softmax(self.classifier.logits(as_batch(x, device)), dim=1)
        label_t = torch.tensor([y if y < log_p.shape[1] else -1 for y in labels], device=device)
        return log_p, label_t

    @staticmethod
    def _pick(log_p: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p of the prompted class, or the max log p where the prompt is unconditional (label -1)."""
        prompted = log_p.gather(1, labels.clamp(min=0)[:, None])[:, 0]
        return torch.where(labels >= 0, prompted, log_p.max(dim=1).values)


class DigitLogProb(DigitObjective):
    """log p(prompted digit) under the shipped classifier (max log p for ""); does not saturate."""

    name = "digit-logprob"

    def score(self, images: Images, prompts: Sequence[str]) -> torch.Tensor:
        log_p, labels = self._log_probs(images, prompts)
        return self._pick(log_p, labels).float()


class DigitConfidence(DigitObjective):
    """p(prompted digit) under the shipped classifier (max p for ""), in [0, 1]."""

    name = "digit-confidence"

    def score(self, images: Images, prompts: Sequence[str]) -> torch.Tensor:
        log_p, labels = self._log_probs(images, prompts)
        return self._pick(log_p, labels).exp().float()


class DigitAccuracy(DigitObjective):
    """1.0 if the classifier's top class is the prompted digit (for "": if max p > 0.5), else 0.0."""

    name = "digit-accuracy"

    def score(self, images: Images, prompts: Sequence[str]) -> torch.Tensor:
        log_p, labels = self._log_probs(images, prompts)
        correct = log_p.argmax(dim=1) == labels
        confident = log_p.max(dim=1).values.exp() > UNCONDITIONAL_ACCURACY_THRESHOLD
        return torch.where(labels >= 0, correct, confident).float()
