"""Click parameter types of the CLI: every number and name a user types is checked here, once, at the boundary.

A bad value is a usage error (exit code 2) whose message names the value and the allowed range or
forms. Numbers must be finite (`nan` and `inf` are refused, which click's own FloatRange lets through).
Nothing here imports torch unless a `--device` is actually given.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import click

#: Most seeds one option may expand to ('0-99' is 100), and most images one `generate` makes (image i has seed
#: `--seed + i`): bounds memory and run time of a typo like 0-10**12 or `--num-images 10**12`.
MAX_SEEDS = 100_000
#: Seeds are what torch.Generator.manual_seed takes without wrapping: [0, 2**63 - 1].
MAX_SEED = 2**63 - 1


def _interval(low: float | None, high: float | None, low_open: bool = False, high_open: bool = False) -> str:
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    return f"{left}{'-inf' if low is None else _bound(low)}, {'inf' if high is None else _bound(high)}{right}"


def _bound(value: float) -> str:
    """An interval end as typed: integers exactly (2**63 - 1, not 9.22337e+18), floats short (`:g`)."""
    return str(value) if isinstance(value, int) else f"{value:g}"


class FiniteFloat(click.FloatRange):
    """A finite float in a range; the message gives the allowed interval (`nan`, `inf` are refused)."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        allowed = _interval(self.min, self.max, self.min_open, self.max_open)
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number; allowed: {allowed}", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number; allowed: {allowed}", param, ctx)
        try:
            return super().convert(number, param, ctx)
        except click.BadParameter:
            self.fail(f"{value!r} is out of range; allowed: {allowed}", param, ctx)

    def __repr__(self) -> str:
        return f"FiniteFloat {_interval(self.min, self.max, self.min_open, self.max_open)}"


class BoundedInt(click.IntRange):
    """An integer in a range; the message gives the allowed interval."""

    name = "integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        allowed = _interval(self.min, self.max)
        try:
            number = int(str(value).strip()) if not isinstance(value, int) else value
        except ValueError:
            self.fail(f"{value!r} is not an integer; allowed: {allowed}", param, ctx)
        try:
            return super().convert(number, param, ctx)
        except click.BadParameter:
            self.fail(f"{value!r} is out of range; allowed: {allowed}", param, ctx)


class IntList(click.ParamType):
    """Comma-separated integers, each in [min, max] (e.g. batch sizes '1,2,16')."""

    name = "list"

    def __init__(self, min: int = 1, max: int | None = None) -> None:  # noqa: A002 - click's own naming
        self.min, self.max = min, max

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, list):
            return value
        allowed = _interval(self.min, self.max)
        out = []
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                number = int(part)
            except ValueError:
                self.fail(f"{part!r} is not an integer; expected comma-separated integers like 1,2,16", param, ctx)
            if number < self.min or (self.max is not None and number > self.max):
                self.fail(f"{number} is out of range; allowed: {allowed}", param, ctx)
            out.append(number)
        if not out:
            self.fail(f"{value!r} holds no integers; expected comma-separated integers like 1,2,16", param, ctx)
        return out


class Seeds(click.ParamType):
    """Seeds: '0-99' (inclusive range), '3,5,8' or a mix like '0-9,42'; each in [0, 2**63 - 1], at most
    MAX_SEEDS in all, no duplicates."""

    name = "seeds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, list):
            return value
        try:
            return parse_seeds(str(value))
        except ValueError as err:
            self.fail(str(err), param, ctx)


def parse_seeds(text: str) -> list[int]:
    """'0-99', '3,5,8' or '0-9,42' -> a list of ints; ValueError with the reason otherwise."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low_text, dash, high_text = part.partition("-") if "-" in part[1:] else (part, "", part)
        try:
            low, high = int(low_text), int(high_text)
        except ValueError:
            raise ValueError(f"cannot read seeds {part!r}; use '0-99', '3,5,8' or '0-9,42'") from None
        for seed in (low, high):
            if not 0 <= seed <= MAX_SEED:
                raise ValueError(f"seed {seed} out of range; allowed: [0, 2**63 - 1]")
        if high < low:
            raise ValueError(f"seed range {part!r} is empty (end before start)")
        if len(seeds) + high - low + 1 > MAX_SEEDS:
            raise ValueError(f"{text!r} gives more than {MAX_SEEDS} seeds")
        seeds += range(low, high + 1)
    if not seeds:
        raise ValueError("no seeds given")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {text!r} repeat a seed; each seed may appear once")
    return seeds


def check_image_seeds(seed: int, images: int, prompts: int = 1) -> None:
    """`generate`'s seeds: `prompts * images` images in all, image i with seed `seed + i`. At most MAX_SEEDS
    images, and the last seed at most 2**63 - 1 (what torch.Generator takes); click.BadParameter (a usage
    error naming the option and the allowed range) otherwise."""
    total = prompts * images
    if total > MAX_SEEDS:
        raise click.BadParameter(
            f"{images} images for each of {prompts} prompts is {total} images; allowed: at most {MAX_SEEDS} in all",
            param_hint="'--num-images'")
    if seed + total - 1 > MAX_SEED:
        raise click.BadParameter(
            f"{seed} with {total} image(s) needs seeds up to {seed + total - 1} (image i uses seed + i); allowed: "
            f"[0, {MAX_SEED - total + 1}] for {total} image(s), so that every seed is at most 2**63 - 1",
            param_hint="'--seed'")


class Device(click.ParamType):
    """A torch device that exists here: cpu, cuda, cuda:N (N < the GPU count), mps."""

    name = "device"
    KINDS = ("cpu", "cuda", "mps")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        import torch

        text = str(value).strip()
        try:
            device = torch.device(text)
        except (RuntimeError, TypeError, ValueError):
            self.fail(f"{text!r} is not a torch device; allowed: cpu, cuda, cuda:N, mps", param, ctx)
        if device.type not in self.KINDS:
            self.fail(f"{text!r}: device type {device.type!r} is not supported; allowed: cpu, cuda, cuda:N, mps",
                      param, ctx)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
                self.fail(f"{text!r}: CUDA is not available on this machine ({why}); use --{param.name if param else 'device'} cpu",
                          param, ctx)
            count = torch.cuda.device_count()
            if device.index is not None and device.index >= count:
                self.fail(f"{text!r}: this machine has {count} CUDA device(s); allowed: cuda:0..cuda:{count - 1}",
                          param, ctx)
        if device.type == "mps" and not torch.backends.mps.is_available():
            self.fail(f"{text!r}: MPS is not available on this machine; use cpu", param, ctx)
        return str(device)


class PluginName(click.ParamType):
    """The name of a registered plugin of one kind (perturbation, objective, model, adapter)."""

    name = "name"

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from headhunter.plugin_system.registry import get_registry

        names = get_registry().names(self.kind)
        if value not in names:
            self.fail(f"unknown {self.kind} {value!r}; allowed: {', '.join(names) or '(none installed)'}", param, ctx)
        return value


class WritableDir(click.Path):
    """An output folder that exists or can be created, and can be written to (checked before any work)."""

    def __init__(self) -> None:
        super().__init__(file_okay=False, dir_okay=True, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = super().convert(value, param, ctx)
        probe = Path(os.path.abspath(path))
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            self.fail(f"{str(value)!r}: {probe} is not a folder", param, ctx)
        if not os.access(probe, os.W_OK | os.X_OK):
            self.fail(f"{str(value)!r}: folder {probe} is not writable", param, ctx)
        return path


class Scope(click.Choice):
    """The identity scopes, `headhunter.format.schema.SCOPES` (joint, image, pag_mask), read when first needed: building
    the CLI must not import the schema (pydantic), so `headhunter --help` stays quick."""

    def __init__(self) -> None:
        super().__init__((), case_sensitive=True)

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        from headhunter.format.schema import SCOPES

        return SCOPES

    @choices.setter
    def choices(self, value: Any) -> None:  # click.Choice.__init__ assigns; the schema is the source
        pass


class DType(click.Choice):
    """A torch dtype by its torch name: float32, float16, bfloat16 (the one spelling of every verb's
    `--dtype`); the short spellings fp32, fp16, bf16 that `bench` used are accepted and mean the same."""

    NAMES = ("float32", "float16", "bfloat16")
    OLD = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

    def __init__(self) -> None:
        super().__init__(self.NAMES, case_sensitive=False)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value).strip().lower()
        return super().convert(self.OLD.get(text, text), param, ctx)


#: Shared instances of the common ranges (help texts stay in the commands).
UNIT = FiniteFloat(0.0, 1.0)
FRACTION = FiniteFloat(0.0, 1.0, min_open=True)
NON_NEGATIVE = FiniteFloat(min=0.0)
STRENGTH = FiniteFloat(0.0, 1.0, min_open=True)
POSITIVE_INT = BoundedInt(min=1)
IMAGES = BoundedInt(1, MAX_SEEDS)
STEPS = BoundedInt(1, 10_000)
SEED = BoundedInt(0, MAX_SEED)
PIXELS = BoundedInt(8, 16_384)
