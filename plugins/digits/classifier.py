"""A small CNN digit classifier: the yardstick behind the digit objectives and FD-digits.

Trained on the training split only (the held-out split stays unseen, so FD-digits and the accuracy of real
held-out digits are honest). Inputs are images in [0, 1], [B, 1, 16, 16]; ``as_batch`` also accepts RGB,
other sizes and PIL images. ``features`` is the 64-d penultimate layer used by FD-digits.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from headhunter.errors import ObjectiveError
from headhunter.contracts.objective import as_tensor_images

from .data import IMAGE_SIZE, NUM_CLASSES, load_split, to_unit

CLASSIFIER_FILE = "classifier.safetensors"
CLASSIFIER_CONFIG_FILE = "classifier_config.json"
WEIGHTS_DIR = Path(__file__).parent / "weights"


class DigitClassifier(nn.Module):
    """conv32-conv32-pool-conv64-pool-fc(``feature_dim``)-fc(10) on 16x16 images in [0, 1]."""

    def __init__(self, width: int = 32, feature_dim: int = 64, dropout: float = 0.3):
        super().__init__()
        self.config = {"width": width, "feature_dim": feature_dim, "dropout": dropout}
        self.conv = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Dropout(dropout),
                                nn.Linear(2 * width * (IMAGE_SIZE // 4) ** 2, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, NUM_CLASSES)

    def features(self, images: torch.Tensor | Sequence[Any]) -> torch.Tensor:
        """Penultimate features [B, feature_dim] of images in [0, 1] (see ``as_batch`` for accepted forms)."""
        x = as_batch(images, self.head.weight.device) * 2.0 - 1.0
        return self.fc(self.conv(x))

    def logits(self, images: torch.Tensor | Sequence[Any]) -> torch.Tensor:
        """Class logits [B, 10] of images in [0, 1]."""
        return self.head(self.features(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images)


def as_batch(images: torch.Tensor | Sequence[Any], device: torch.device | str = "cpu") -> torch.Tensor:
    """Normalise images to float32 [B, 1, 16, 16] in [0, 1].

    Accepts a tensor [B, C, H, W] in [0, 1] (C = 1 or 3; RGB is averaged to gray; other sizes are resized
    bilinearly with antialiasing) or a list of PIL images.
    """
    x = as_tensor_images(images).to(device=device, dtype=torch.float32)
    if x.shape[1] not in (1, 3):
        raise ObjectiveError(f"images must have 1 or 3 channels; got shape {list(x.shape)}")
    if x.shape[1] == 3:
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random +-1 pixel translation (zero = background padding) as augmentation."""
    dx, dy = (torch.randint(-1, 2, (2,), generator=gen)).tolist()
    padded = F.pad(x, (1, 1, 1, 1))
    return padded[..., 1 + dy:1 + dy + IMAGE_SIZE, 1 + dx:1 + dx + IMAGE_SIZE]


@torch.no_grad()
def accuracy(model: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on images in [0, 1]."""
    return (model.logits(images).argmax(dim=1) == labels).float().mean().item()


def train_classifier(epochs: int = 30, seed: int = 0, batch_size: int = 64, lr: float = 1e-3,
                     progress: bool = True) -> tuple[DigitClassifier, dict[str, float]]:
    """Train on the training split with shift augmentation; return the model (eval) and held-out stats."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    images, labels = load_split("train")
    images = to_unit(images)
    model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    for _ in tqdm(range(epochs), desc="digits classifier", disable=not progress):
        model.train()
        perm = torch.randperm(images.shape[0], generator=gen)
        for start in range(0, images.shape[0], batch_size):
            idx = perm[start:start + batch_size]
            loss = F.cross_entropy(model.logits(_shift(images[idx], gen)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    held_images, held_labels = load_split("heldout")
    stats = {"heldout_accuracy": accuracy(model, to_unit(held_images), held_labels),
             "train_accuracy": accuracy(model, images, labels)}
    return model, stats


def save_classifier(model: DigitClassifier, out_dir: str | Path) -> None:
    """Write ``classifier.safetensors`` (float32) and its config JSON into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out / CLASSIFIER_FILE))
    (out / CLASSIFIER_CONFIG_FILE).write_text(json.dumps(model.config, indent=2) + "\n")


def load_classifier(weights_dir: str | Path | None = None, device: str | torch.device = "cpu") -> DigitClassifier:
    """Load the shipped classifier (or one from ``weights_dir``) in eval mode, from safetensors only."""
    wdir = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    config_path = wdir / CLASSIFIER_CONFIG_FILE
    if not config_path.is_file():
        raise ObjectiveError(f"No digits classifier at {config_path}; train one with "
                                "`python -m headhunter.plugins.digits.train --out DIR`")
    model = DigitClassifier(**json.loads(config_path.read_text()))
    model.load_state_dict(load_file(str(wdir / CLASSIFIER_FILE)), strict=True)
    return model.to(device).eval().requires_grad_(False)
