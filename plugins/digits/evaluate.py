"""The model card's quality floor: ``python -m headhunter.plugins.digits.evaluate [--weights DIR] [--out DIR]``.

Measures, with 95 % intervals: the classifier on real held-out digits; conditional samples without and
with CFG (classifier accuracy, p(prompted class), FD-digits); unconditional samples (FD-digits, max p,
class entropy); and the real-data floor (FD of training digits vs held-out at the same n). Noise comes
from a fixed seed per set and is drawn up front, so results do not depend on the batch size.
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: threads that spin at barriers stall 3-50x when the CPU is shared with another
# busy process (measured on 2 cores: 4.5 -> 1.4 s per training step); sleeping threads do not.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .classifier import DigitClassifier, load_classifier
from .data import NUM_CLASSES, load_split, prompt_to_label, to_unit
from .metrics import classifier_features, fd_bootstrap, heldout_features
from .model import DigitsPipeline, load_digits_pipeline

COND_SEED = 1000
UNCOND_SEED = 2000
FLOOR_SEED = 3000


def balanced_prompts(n: int) -> list[str]:
    """``n`` prompts cycling "0".."9" (sample i is digit i mod 10)."""
    return [str(i % NUM_CLASSES) for i in range(n)]


@torch.no_grad()
def generate(pipe: DigitsPipeline, prompts: list[str], seed: int, guidance_scale: float = 1.0,
             num_inference_steps: int = 12, batch_size: int = 250, **kwargs: Any) -> torch.Tensor:
    """Samples [N, 1, 16, 16] in [0, 1]; the noise of all N is drawn up front from ``seed``."""
    size = pipe.transformer.config.sample_size
    noise = torch.randn((len(prompts), 1, size, size), generator=torch.Generator().manual_seed(seed))
    chunks = []
    for start in range(0, len(prompts), batch_size):
        end = start + batch_size
        chunks.append(pipe(prompts[start:end], latents=noise[start:end], guidance_scale=guidance_scale,
                           num_inference_steps=num_inference_steps, output_type="pt", **kwargs).images)
    return torch.cat(chunks)


def mean_ci(values: torch.Tensor | np.ndarray) -> dict[str, float]:
    """Mean and the half-width of its normal 95 % interval (1.96 standard errors)."""
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "ci95": float(1.96 * v.std(ddof=1) / math.sqrt(len(v)))}


def proportion_ci(hits: torch.Tensor | np.ndarray) -> dict[str, float]:
    """Share of true values with its Wilson 95 % interval (sensible at 0 % and 100 %, unlike mean +- 1.96 se)."""
    v = np.asarray(hits, np.float64)
    n, p, z = len(v), float(v.mean()), 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"mean": p, "low": centre - half, "high": centre + half}


def class_entropy(pred: torch.Tensor) -> float:
    """Normalised entropy (0..1) of the histogram of predicted classes: 1 = all digits equally often."""
    p = torch.bincount(pred, minlength=NUM_CLASSES).double() / len(pred)
    p = p[p > 0]
    return float(-(p * p.log()).sum() / math.log(NUM_CLASSES))


@torch.no_grad()
def sample_quality(images: torch.Tensor, prompts: list[str], classifier: DigitClassifier,
                   ref_feats: np.ndarray) -> dict[str, Any]:
    """Classifier accuracy and p(prompted class) (or max p for ""), FD-digits and class entropy."""
    probs = torch.softmax(classifier.logits(images), dim=1)
    pred = probs.argmax(dim=1)
    labels = torch.tensor([prompt_to_label(p) for p in prompts])
    cond = labels < NUM_CLASSES
    p_y = torch.where(cond, probs.gather(1, labels.clamp(max=NUM_CLASSES - 1)[:, None])[:, 0],
                      probs.max(dim=1).values)
    result = {"n": len(prompts), "p_prompted": mean_ci(p_y), "max_p": mean_ci(probs.max(dim=1).values),
              "class_entropy": class_entropy(pred),
              "fd": asdict(fd_bootstrap(classifier_features(images, classifier), ref_feats))}
    if bool(cond.all()):
        result["accuracy"] = proportion_ci((pred == labels).double())
    return result


def real_floor(classifier: DigitClassifier, ref_feats: np.ndarray, n: int) -> dict[str, Any]:
    """The classifier on held-out digits, and FD of ``n`` random training digits vs the held-out set."""
    held_images, held_labels = load_split("heldout")
    train_images, _ = load_split("train")
    idx = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(FLOOR_SEED))[:n]
    probs = torch.softmax(classifier.logits(to_unit(held_images)), dim=1)
    return {"heldout_accuracy": proportion_ci((probs.argmax(dim=1) == held_labels).double()),
            "heldout_p_true": mean_ci(probs.gather(1, held_labels[:, None])[:, 0]),
            "fd_train_vs_heldout": asdict(fd_bootstrap(classifier_features(to_unit(train_images[idx]), classifier),
                                                       ref_feats)),
            "n_train": int(len(idx)), "n_heldout": int(len(held_labels))}


def evaluate(weights_dir: str | Path | None = None, n: int = 1000, cfg_scales: tuple[float, ...] = (1.0, 1.5, 3.0),
             steps: int = 12) -> dict[str, Any]:
    """All quality-floor figures for the model (and classifier) in ``weights_dir`` (default: shipped)."""
    start = time.perf_counter()
    pipe = load_digits_pipeline(weights_dir)
    load_seconds = time.perf_counter() - start
    pipe.set_progress_bar_config(disable=True)
    classifier = load_classifier(weights_dir)
    ref = heldout_features(classifier)
    results: dict[str, Any] = {"load_seconds": load_seconds, "steps": steps, "real": real_floor(classifier, ref, n)}
    prompts = balanced_prompts(n)
    for scale in cfg_scales:
        t0 = time.perf_counter()
        images = generate(pipe, prompts, COND_SEED, guidance_scale=scale, num_inference_steps=steps)
        results[f"cond_cfg{scale:g}"] = {**sample_quality(images, prompts, classifier, ref),
                                         "seconds": time.perf_counter() - t0}
    t0 = time.perf_counter()
    images = generate(pipe, [""] * n, UNCOND_SEED, num_inference_steps=steps)
    results["uncond"] = {**sample_quality(images, [""] * n, classifier, ref), "seconds": time.perf_counter() - t0}
    return results


def summary(results: dict[str, Any]) -> str:
    """Human-readable lines of the main figures."""
    def pm(d: dict[str, float]) -> str:
        return f"{d['mean']:.3f} ± {d['ci95']:.3f}"

    def wilson(d: dict[str, float]) -> str:
        return f"{d['mean']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"

    def fd(d: dict[str, float]) -> str:
        return f"{d['mean']:.1f} ± {d['high'] - d['mean']:.1f}"

    real = results["real"]
    lines = [f"load {results['load_seconds']:.2f} s",
             f"real: held-out acc {wilson(real['heldout_accuracy'])}, p(true) {pm(real['heldout_p_true'])}, "
             f"FD train({real['n_train']}) vs held-out {fd(real['fd_train_vs_heldout'])}"]
    for key, r in results.items():
        if key.startswith("cond_"):
            lines.append(f"{key}: acc {wilson(r['accuracy'])}, p(y) {pm(r['p_prompted'])}, FD {fd(r['fd'])}, "
                         f"entropy {r['class_entropy']:.3f} ({r['seconds']:.0f} s)")
    u = results["uncond"]
    lines.append(f"uncond: max p {pm(u['max_p'])}, FD {fd(u['fd'])}, entropy {u['class_entropy']:.3f} "
                 f"({u['seconds']:.0f} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Quality floor of the digits demo model (model card figures).")
    parser.add_argument("--weights", type=Path, default=None, help="weights directory (default: shipped)")
    parser.add_argument("--out", type=Path, default=None, help="write results.json here")
    parser.add_argument("-n", type=int, default=1000, help="samples per setting")
    parser.add_argument("--steps", type=int, default=12, help="Euler steps")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = evaluate(args.weights, n=args.n, steps=args.steps)
    print(summary(results))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
