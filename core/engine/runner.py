"""Batched guided generation where every image has its own head set: the search's and evaluation's engine.

One pipeline call carries many (head set, prompt, seed) rows; `apply(..., per_sample=True)` gives each
image its own perturbed branch, so one transformer forward scores many candidates at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from headhunter.format.headset import HeadSet
from headhunter.format.schema import GenerationSettings
from headhunter.engine.guidance import apply


@dataclass(frozen=True)
class Row:
    """One image to make: the head set guiding it (None: unguided), its prompt and its seed."""

    headset: HeadSet | None
    prompt: str
    seed: int


def pipeline_device(pipe: Any) -> torch.device:
    """The device the pipeline's transformer lives on."""
    return next(pipe.transformer.parameters()).device


def generate_rows(pipe: Any, rows: Sequence[Row], settings: GenerationSettings,
                  step_callback: Callable[..., dict[str, Any]] | None = None) -> torch.Tensor:
    """Images [len(rows), C, H, W] in [0, 1]; row i guided by rows[i].headset with `settings.guidance`
    (scale w, window, scope; `cfg` becomes the pipeline's `guidance_scale`) and `settings.perturbation`.
    `step_callback` is passed as the pipeline's `callback_on_step_end` (e.g. the multi-fidelity search's
    x0 readout, `headhunter.search.fidelity.X0Readout`)."""
    device = pipeline_device(pipe)
    generators = [torch.Generator(device=device).manual_seed(int(r.seed)) for r in rows]
    kwargs = dict(settings.pipeline_kwargs)
    if settings.guidance.cfg is not None:
        kwargs["guidance_scale"] = settings.guidance.cfg
    if step_callback is not None:
        kwargs["callback_on_step_end"] = step_callback
    handle = apply(pipe, [r.headset for r in rows], per_sample=True, settings=settings.guidance,
                   perturbation=settings.perturbation)
    with handle, torch.no_grad(), _quiet(pipe):
        out = pipe(
            prompt=[r.prompt for r in rows],
            num_inference_steps=settings.steps,
            generator=generators,
            output_type="pt",
            **kwargs,
        )
    images = out.images if hasattr(out, "images") else out[0]
    return images.float().cpu()


@contextmanager
def _quiet(pipe: Any) -> Iterator[None]:
    """Silence the pipeline's own per-call progress bar (the search shows one bar over everything)."""
    had = hasattr(pipe, "_progress_bar_config")
    saved = dict(getattr(pipe, "_progress_bar_config", {}))
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(**{**saved, "disable": True})
    try:
        yield
    finally:
        if had:
            pipe._progress_bar_config = saved
        elif hasattr(pipe, "_progress_bar_config"):
            del pipe._progress_bar_config


def run_batches(
    pipe: Any,
    rows: Sequence[Row],
    settings: GenerationSettings,
    batch_size: int,
    on_batch: Callable[[int, torch.Tensor], None],
    skip: Callable[[int], bool] = lambda start: False,
    step_callback: Callable[[], Callable[..., dict[str, Any]]] | None = None,
) -> None:
    """Generate `rows` in fixed slices of `batch_size`; call `on_batch(start, images)` after each.

    Slice boundaries depend only on the row list and batch size, so a resumed run recomputes exactly the
    slices an uninterrupted one would (bit-identical results); `skip(start)` skips finished slices;
    `step_callback()` makes a fresh `callback_on_step_end` for each call (None: none).
    """
    for start in range(0, len(rows), batch_size):
        if skip(start):
            continue
        callback = step_callback() if step_callback is not None else None
        on_batch(start, generate_rows(pipe, rows[start : start + batch_size], settings, callback))


def auto_batch_size(pipe: Any, cap: int = 256) -> int:
    """Rows per pipeline call: a fixed budget on CPU, sized from free memory on CUDA."""
    device = pipeline_device(pipe)
    if device.type != "cuda":
        return max(1, min(cap, 64))
    free, _ = torch.cuda.mem_get_info(device)
    params = sum(p.numel() * p.element_size() for p in pipe.transformer.parameters())
    per_row = max(params // 50, 64 * 1024 * 1024)  # activations of one row (cond + perturbed) at most
    return max(1, min(cap, int(0.6 * free) // per_row))
