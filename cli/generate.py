"""`headhunter generate`: guided images from a head set, one PNG each, plus a JSON sidecar that reproduces them.

MODEL is a registered model (`digits`, the embedded demo, is the default) or a diffusers pipeline folder or
Hub repo id that is already on this machine: it is loaded offline (`local_files_only=True`), never
downloaded. `--compare` also makes the unguided images with the same seeds and a side-by-side grid.
"""

from __future__ import annotations

import inspect
import json
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from headhunter.format.files import write_atomic  # the one atomic writer: temp file + fsync + rename
from headhunter.cli import options
from headhunter.cli.params import (
    IMAGES, MAX_SEEDS, NON_NEGATIVE, PIXELS, SEED, STEPS, UNIT, Device, DType, FiniteFloat, Scope, WritableDir, check_image_seeds,
)

SIDECAR = "generate.json"
GRID = "compare.png"
DTYPES = DType.NAMES


@click.command()
@click.argument("model", required=False, default="digits")
@click.option("--headset", "headsets", multiple=True, required=True,
              help="Head set: a file, a folder, `preset:NAME` or a Hub repo id. Repeat for several branches.")
@click.option("--prompt", "prompts", multiple=True, required=True, help="Prompt (repeatable; digits: '0'..'9', or \"\" for unconditional).")
@click.option("--negative-prompt", help="Negative prompt for CFG (default: the pipeline's, usually '').")
@click.option("--scale", type=NON_NEGATIVE, help="Perturbation guidance scale w (default: the head set's).")
@click.option("--cfg", type=NON_NEGATIVE,
              help="CFG scale s, diffusers convention uncond + s (cond - uncond); s <= 1 turns CFG off. On FLUX "
                   "this is true CFG (true_cfg_scale). Default: the head set's recommendation, else the pipeline's.")
@click.option("--distilled-guidance", type=FiniteFloat(min=0.0),
              help="FLUX.1-dev's guidance embedding (the pipeline's guidance_scale); default: the pipeline's.")
@click.option("--start", type=UNIT, help="Window start, fraction of steps, inclusive (default: head set's).")
@click.option("--stop", type=UNIT, help="Window stop, fraction of steps, exclusive (default: head set's).")
@click.option("--scope", type=Scope(), help="Identity scope (default: the head set's).")
@click.option("--steps", type=STEPS, help="Denoising steps (default: the pipeline's).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the first image; image i uses seed + i.")
@click.option("--num-images", type=IMAGES, default=1, show_default=True,
              help=f"Images per prompt (at most {MAX_SEEDS} images in all).")
@click.option("--height", type=PIXELS, help="Image height in pixels (default: the model's).")
@click.option("--width", type=PIXELS, help="Image width in pixels (default: the model's).")
@click.option("--out", type=WritableDir(), default=Path("generated"), show_default=True,
              help="Output folder for the PNGs and generate.json.")
@click.option("--compare", is_flag=True, help="Also make the unguided images (same seeds) and compare.png.")
@click.option("--sequential", is_flag=True, help="Run the perturbed pass as its own forward (less memory).")
@click.option("--device", type=Device(), help="torch device: cpu, cuda, cuda:N, mps (default: cuda if available, else cpu).")
@options.dtype("Weights dtype (default: bfloat16 on cuda, float32 on cpu; a registered model keeps its own):")
def generate(model: str, headsets: tuple[str, ...], prompts: tuple[str, ...], negative_prompt: str | None,
             scale: float | None, cfg: float | None, distilled_guidance: float | None, start: float | None,
             stop: float | None, scope: str | None, steps: int | None, seed: int, num_images: int,
             height: int | None, width: int | None, out: Path, compare: bool, sequential: bool,
             device: str | None, dtype_name: str | None) -> None:
    """Generate images from MODEL (default `digits`) guided by head sets; writes PNGs and generate.json."""
    from headhunter import load_headset
    from headhunter.format.preflight import check_before_loading

    check_image_seeds(seed, num_images, len(prompts))  # the seed list is built after the model loads
    loaded = [load_headset(source) for source in headsets]
    check_before_loading(model, prompts=prompts, headsets=loaded)  # prompts and head-set fit, before torch loads
    import torch

    from headhunter import apply

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe, dtype = load_pipeline(model, device, dtype_name)
    if cfg is None:
        cfg = next((hs.metadata.guidance.cfg for hs in loaded if hs.metadata.guidance.cfg is not None), None)
    call, steps = call_kwargs(pipe, list(prompts), negative_prompt, cfg, distilled_guidance, steps, num_images,
                              height, width)
    seeds = [seed + i for i in range(len(prompts) * num_images)]
    # apply() checks the head sets against the model before anything runs
    handle = apply(pipe, loaded, scale=scale, start=start, stop=stop, scope=scope, batched=not sequential)
    images = {}
    with _progress(pipe, total=steps * (2 if compare else 1)) as bar:
        with handle:
            images["guided"] = _call(pipe, call, _generators(seeds, device), bar)
        if compare:
            images["unguided"] = _call(pipe, call, _generators(seeds, device), bar)

    files = write_outputs(out, images, prompts, num_images, seeds, handle)
    record = settings(model, pipe, headsets, loaded, handle, prompts, cfg, distilled_guidance, steps, seed,
                      seeds, num_images, height, width, device, dtype, compare, files, call, out=out)
    write_atomic(out / SIDECAR, (json.dumps(record, indent=2) + "\n").encode())
    for kind in ("guided", "unguided"):
        for name in files.get(kind, []):
            click.echo(out / name)
    if "grid" in files:
        click.echo(out / files["grid"])
    click.echo(out / SIDECAR)


def _generators(seeds: list[int], device: str) -> list[Any]:
    import torch

    return [torch.Generator(device).manual_seed(s) for s in seeds]


# ----- model and call ---------------------------------------------------------------------------------------
def load_pipeline(model: str, device: str, dtype: str | None) -> tuple[Any, str]:
    """`headhunter.load_pipeline` (registered model, else a local diffusers folder or cached repo; never a
    download), on `device`; returns the pipeline and the dtype name it runs in. Registered models keep
    their own dtype unless `dtype` is given; diffusers pipelines default to bfloat16 on CUDA, else float32."""
    import torch

    from headhunter import load_pipeline as load
    from headhunter.plugin_system.registry import get_registry

    registered = model in get_registry().names("model")
    if dtype is None and not registered:
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch_dtype -> dtype rename in newer diffusers
        pipe = load(model, torch_dtype=None if registered or dtype is None else getattr(torch, dtype))
    pipe.to(device)
    if registered and dtype is not None:
        pipe.to(dtype=getattr(torch, dtype))
    return pipe, dtype or str(pipe.transformer.dtype).removeprefix("torch.")


def call_kwargs(pipe: Any, prompts: list[str], negative_prompt: str | None, cfg: float | None,
                distilled_guidance: float | None, steps: int | None, num_images: int, height: int | None,
                width: int | None) -> tuple[dict[str, Any], int]:
    """The pipeline call's keyword arguments (only those its signature has) and the resolved step count."""
    from headhunter.errors import ModelError

    params = inspect.signature(pipe.__call__).parameters
    if steps is None:
        default = params["num_inference_steps"].default if "num_inference_steps" in params else None
        steps = default if isinstance(default, int) else 28
    call: dict[str, Any] = {"prompt": prompts if len(prompts) > 1 else prompts[0], "num_inference_steps": steps,
                            "num_images_per_prompt": num_images}
    if cfg is not None:
        if "true_cfg_scale" in params:  # FLUX: guidance_scale is the distilled embedding, true CFG is separate
            call["true_cfg_scale"] = cfg
            if cfg > 1 and negative_prompt is None:
                negative_prompt = ""
        else:
            call["guidance_scale"] = cfg
    if distilled_guidance is not None:
        if "true_cfg_scale" not in params:
            raise ModelError(f"--distilled-guidance is for FLUX-style pipelines; {type(pipe).__name__} has none "
                             "(use --cfg)")
        call["guidance_scale"] = distilled_guidance
    if negative_prompt is not None and len(prompts) > 1:
        # one per prompt: FluxPipeline does not repeat a single negative prompt over several prompts
        negative_prompt = [negative_prompt] * len(prompts)
    for name, value in (("negative_prompt", negative_prompt), ("height", height), ("width", width)):
        if value is not None:
            if name not in params:
                raise ModelError(f"--{name.replace('_', '-')} is not supported by {type(pipe).__name__}")
            call[name] = value
    return call, steps


def _call(pipe: Any, call: dict[str, Any], generators: list[Any], bar: Any) -> list[Any]:
    import torch

    params = inspect.signature(pipe.__call__).parameters
    extra: dict[str, Any] = {"generator": generators, "output_type": "pil"}
    if bar is not None and "callback_on_step_end" in params:
        extra["callback_on_step_end"] = lambda p, i, t, kw: (bar.update(), {})[1]
    with torch.no_grad():
        out = pipe(**call, **extra)
    return list(out.images if hasattr(out, "images") else out[0])


class _progress:
    """A tqdm bar over all denoising steps (the pipeline's own bar is silenced meanwhile)."""

    def __init__(self, pipe: Any, total: int) -> None:
        self.pipe, self.total = pipe, total

    def __enter__(self) -> Any:
        from tqdm.auto import tqdm

        self.pipe.set_progress_bar_config(disable=True)
        self.bar = tqdm(total=self.total, desc="denoising", unit="step", file=sys.stderr)
        return self.bar

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()
        self.pipe.set_progress_bar_config(disable=False)


# ----- outputs ---------------------------------------------------------------------------------------------
def write_outputs(out: Path, images: dict[str, list[Any]], prompts: tuple[str, ...], num_images: int,
                  seeds: list[int], handle: Any) -> dict[str, Any]:
    """Write one PNG per image (and the comparison grid); return the file names by kind."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    for run, batch in images.items():
        names = []
        for i, image in enumerate(batch):
            name = f"{run}_{i:03d}_seed{seeds[i]}.png"
            _save_png(image, out / name)
            names.append(name)
        files[run] = names
    if "unguided" in images:
        from headhunter.format.preflight import describe_prompt

        labels = [f"{describe_prompt(prompts[i // num_images])} seed {seeds[i]}" for i in range(len(seeds))]
        grid = comparison_grid(images["unguided"], images["guided"], labels, _guided_label(handle))
        _save_png(grid, out / GRID)
        files["grid"] = GRID
    return files


def comparison_grid(unguided: list[Any], guided: list[Any], labels: list[str], guided_label: str,
                    min_cell: int = 128) -> Any:
    """One row per image: [unguided | guided], cells upscaled (nearest) to at least `min_cell` pixels."""
    from PIL import Image, ImageDraw

    from headhunter.report.labels import fit_text, label_font, text_width

    w, h = guided[0].size
    factor = max(1, -(-min_cell // min(w, h)))
    cw, ch, pad, head = w * factor, h * factor, 4, 18
    side = int(min(260, max(text_width(label) for label in labels) + 10))
    grid = Image.new("RGB", (side + 2 * cw + 3 * pad, head + len(guided) * (ch + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    font = label_font()
    draw.text((side + pad, 3), "unguided", fill="black", font=font)
    draw.text((side + cw + 2 * pad, 3), fit_text(guided_label, cw), fill="black", font=font)
    for row, (a, b, label) in enumerate(zip(unguided, guided, labels)):
        y = head + row * (ch + pad)
        draw.text((4, y + ch // 2 - 6), fit_text(label, side - 6), fill="black", font=font)
        for col, image in enumerate((a, b)):
            cell = image.convert("RGB").resize((cw, ch), Image.NEAREST)
            grid.paste(cell, (side + pad + col * (cw + pad), y))
    return grid


def _guided_label(handle: Any) -> str:
    return "guided " + ", ".join(f"w={b.scale:g}" for b in handle.branches)


def _save_png(image: Any, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())



def settings(model: str, pipe: Any, sources: tuple[str, ...], loaded: list[Any], handle: Any,
             prompts: tuple[str, ...], cfg: float | None, distilled_guidance: float | None, steps: int, seed: int,
             seeds: list[int], num_images: int, height: int | None, width: int | None, device: str, dtype: str,
             compare: bool, files: dict[str, Any], call: dict[str, Any], out: Path | str = "generated") -> dict[str, Any]:
    """Every setting of the run, resolved, and the command that makes the same images again."""
    import diffusers
    import torch

    from headhunter import __version__

    branches = [{"source": src, "name": hs.name, "architecture": hs.metadata.architecture, "heads": hs.notation(),
                 "scale": b.scale, "start": b.start, "stop": b.stop}
                for src, hs, b in zip(sources, loaded, handle.branches)]
    args = [model] + [a for src in sources for a in ("--headset", src)] + [a for p in prompts for a in ("--prompt", p)]
    if "negative_prompt" in call:
        negative = call["negative_prompt"]  # one string, repeated per prompt in the call
        args += ["--negative-prompt", negative[0] if isinstance(negative, list) else negative]
    for flag, attr in (("--scale", "scale"), ("--start", "start"), ("--stop", "stop")):
        values = {getattr(b, attr) for b in handle.branches}
        if len(values) == 1:  # several different values came from the head-set files themselves
            args += [flag, f"{values.pop():g}"]
    args += ["--scope", handle.scope, "--steps", str(steps), "--seed", str(seed), "--num-images", str(num_images),
             "--device", device, "--dtype", dtype]
    for flag, value in (("--cfg", cfg), ("--distilled-guidance", distilled_guidance), ("--height", height),
                        ("--width", width)):
        if value is not None:
            args += [flag, f"{value:g}"]
    args += (["--compare"] if compare else []) + (["--sequential"] if not handle.batched else [])
    args += ["--out", str(out)]
    return {
        "command": "headhunter generate " + shlex.join(args),
        "model": model,
        "pipeline": type(pipe).__name__,
        "headsets": branches,
        "perturbation": handle.perturbation.spec(),
        "scope": handle.scope,
        "batched": handle.batched,
        "prompts": list(prompts),
        "cfg": cfg,
        "distilled_guidance": distilled_guidance,
        "pipeline_call": {k: v for k, v in call.items() if k != "prompt"},
        "steps": steps,
        "seed": seed,
        "seeds": seeds,
        "num_images": num_images,
        "height": height,
        "width": width,
        "device": device,
        "dtype": dtype,
        "files": files,
        "versions": {"headhunter": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__},
    }
