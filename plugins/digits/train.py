"""Train the embedded digits model and its classifier: ``python -m headhunter.plugins.digits.train --out DIR``.

Recipe (defaults of ``TrainConfig``): rectified flow as SD3 (x_t = (1 - t) x0 + t eps, target eps - x0,
t ~ logit-normal(0, 1), timestep = 1000 t), null label with probability ``p_uncond``, AdamW with linear
warm-up and a cosine decay to ``lr_final``, gradient clipping, EMA of the weights (the EMA weights ship).
Everything is seeded; on the same machine and thread count the run is reproducible.
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: threads that spin at barriers stall 3-50x when the CPU is shared with another
# busy process (measured on 2 cores: 4.5 -> 1.4 s per training step); sleeping threads do not.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import load_split
from .model import LABEL_ENCODER_CONFIG, LabelEncoder, build_transformer, save_model

RECIPE_FILE = "recipe.json"


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (all recorded in ``recipe.json``)."""

    steps: int = 1400
    batch_size: int = 128
    lr: float = 1e-3
    lr_final: float = 1e-4
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    p_uncond: float = 0.15
    ema: float = 0.995
    seed: int = 0
    threads: int = 2
    num_layers: int = 6
    num_attention_heads: int = 8
    attention_head_dim: int = 16
    classifier_epochs: int = 30


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr`` for ``warmup`` steps, then cosine decay to ``lr_final`` at ``steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr_final + 0.5 * (cfg.lr - cfg.lr_final) * (1 + math.cos(math.pi * progress))


def ema_decay(step: int, cfg: TrainConfig) -> float:
    """EMA decay with a warm-up ((1 + step) / (10 + step)) so early weights do not dominate."""
    return min(cfg.ema, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema_model: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter."""
    for p_ema, p in zip(ema_model.parameters(), model.parameters(), strict=True):
        p_ema.lerp_(p, 1.0 - decay)


def flow_loss(transformer: torch.nn.Module, label_encoder: LabelEncoder, x0: torch.Tensor,
              labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Rectified-flow MSE: the transformer at x_t = (1 - t) x0 + t eps, timestep 1000 t, must predict eps - x0."""
    t = torch.sigmoid(torch.randn(x0.shape[0], generator=gen))
    eps = torch.randn(x0.shape, generator=gen)
    t_b = t.view(-1, 1, 1, 1)
    x_t = (1 - t_b) * x0 + t_b * eps
    embeds, pooled = label_encoder(labels)
    pred = transformer(hidden_states=x_t, timestep=t * 1000, encoder_hidden_states=embeds,
                       pooled_projections=pooled, return_dict=False)[0]
    return F.mse_loss(pred, eps - x0)


def sample_batch(images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig, null_label: int,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch with each label replaced by the null label with probability ``p_uncond``."""
    idx = torch.randint(0, images.shape[0], (cfg.batch_size,), generator=gen)
    y = labels[idx].clone()
    y[torch.rand(cfg.batch_size, generator=gen) < cfg.p_uncond] = null_label
    return images[idx], y


def train_generator(cfg: TrainConfig, progress: bool = True) -> tuple[torch.nn.Module, LabelEncoder, list[float]]:
    """Train transformer + label encoder; return the EMA copies (eval mode) and the per-step losses."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    images, labels = load_split("train")
    transformer = build_transformer(num_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
                                    attention_head_dim=cfg.attention_head_dim)
    label_encoder = LabelEncoder(**LABEL_ENCODER_CONFIG)
    modules = torch.nn.ModuleList([transformer, label_encoder]).train()
    ema = copy.deepcopy(modules).eval().requires_grad_(False)
    opt = torch.optim.AdamW(modules.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc="digits generator", disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        x0, y = sample_batch(images, labels, cfg, label_encoder.null_label, gen)
        loss = flow_loss(transformer, label_encoder, x0, y, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), cfg.grad_clip)
        opt.step()
        ema_update(ema, modules, ema_decay(step, cfg))
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    return ema[0], ema[1], losses


def run(out: Path, cfg: TrainConfig, progress: bool = True) -> dict:
    """Train generator and classifier, write their weights and ``recipe.json`` (with timings) to ``out``."""
    from .classifier import save_classifier, train_classifier

    torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    transformer, label_encoder, losses = train_generator(cfg, progress)
    gen_seconds = time.perf_counter() - start
    save_model(transformer, label_encoder, out)
    start = time.perf_counter()
    classifier, clf_stats = train_classifier(epochs=cfg.classifier_epochs, seed=cfg.seed, progress=progress)
    clf_seconds = time.perf_counter() - start
    save_classifier(classifier, out)
    recipe = {"config": asdict(cfg), "generator_seconds": round(gen_seconds, 1),
              "classifier_seconds": round(clf_seconds, 1), "final_loss_mean_last100": sum(losses[-100:]) / 100,
              "classifier": clf_stats, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
              "losses_every_10": [round(v, 5) for v in losses[::10]]}
    (out / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")
    return recipe


def parse_args(argv: list[str] | None = None) -> tuple[Path, TrainConfig, bool]:
    """Command-line flags: ``--out`` plus one ``--<field>`` per ``TrainConfig`` field."""
    parser = argparse.ArgumentParser(description="Train the headhunter digits demo model and classifier.")
    parser.add_argument("--out", required=True, type=Path, help="output directory for weights and recipe")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    for f in fields(TrainConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = parser.parse_args(argv)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    return args.out, cfg, not args.no_progress


def main(argv: list[str] | None = None) -> None:
    out, cfg, progress = parse_args(argv)
    recipe = run(out, cfg, progress)
    print(f"generator {recipe['generator_seconds']:.0f} s, classifier {recipe['classifier_seconds']:.0f} s, "
          f"final loss {recipe['final_loss_mean_last100']:.4f}; wrote {out}")


if __name__ == "__main__":
    main()
