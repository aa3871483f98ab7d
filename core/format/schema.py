"""The head-set metadata schema (pydantic, strict): what a head set was made for and how to use it.

Input from users is strict (`extra="forbid"`, and every number must be finite: `allow_inf_nan=False`,
also inside the free-form `params` and `evaluation` maps); files from a newer minor format version are read
leniently but loudly (unknown keys are dropped with one warning naming them), and a newer major
version is refused. docs/format.md documents every field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from headhunter._version import __version__
from headhunter.format.sites import Site
from headhunter.format.text import safe_tree

#: Newest version of the file format this library reads and writes: 2.x head sets hold a schedule (strength
#: maps over intervals of the noise level sigma). Readers refuse a newer major version.
FORMAT_VERSION = "2.0"
#: The version a head set without a schedule is written as, so that 1.x readers keep reading it.
CONSTANT_FORMAT_VERSION = "1.0"

#: A seed as torch.Generator.manual_seed takes it: [-2**63, 2**64 - 1] (outside, torch raises mid-run).
Seed = Annotated[int, Field(ge=-(2**63), le=2**64 - 1)]

Scope = Literal["joint", "image", "pag_mask"]
SCOPES: tuple[str, ...] = ("joint", "image", "pag_mask")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class _SafeText(_Strict):
    """Head-set metadata: every string terminal-safe. The input's strings, keys included, pass
    `headhunter.format.text.safe_tree` before validation (control, escape and bidi characters escaped visibly;
    newlines kept only in the fields a model lists in `_multiline`), so metadata from a file, the Hub, a plugin
    or a caller is safe to print and to push, whoever made it. (Settings that drive sampling, such as prompts
    and pipeline arguments, are not rewritten.)"""

    _multiline: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _safe_strings(cls, data: Any) -> Any:
        return safe_tree(data, multiline=cls._multiline) if isinstance(data, dict) else data


def finite_tree(value: Any, where: str) -> Any:
    """Refuse NaN/inf anywhere in a free-form JSON-like value (dicts, lists, numbers, strings)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} holds {value}; numbers must be finite")
    if isinstance(value, dict):
        for key, item in value.items():
            finite_tree(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            finite_tree(item, f"{where}[{index}]")
    return value


class PerturbationSpec(_SafeText):
    """Which perturbation plugin computes the target T·V, and its parameters."""

    name: str = Field(default="softpag", min_length=1, description="perturbation plugin name")
    params: dict[str, Any] = Field(default_factory=dict, description="plugin parameters, e.g. {'sigma': 10}")

    @field_validator("params")
    @classmethod
    def _finite_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        return finite_tree(params, "params")


class GuidanceSettings(_Strict):
    """Guidance settings: pred = uncond + cfg (cond - uncond) + scale (cond - perturbed), inside the window.

    The one carrier of these knobs from the CLI/API through the execution plan (`headhunter.plan.plan`) into
    provenance. Numbers must be finite; the step window is fractions of the number of steps, start
    inclusive, stop exclusive (step i of N is guided iff start <= i/N < stop).
    """

    scale: float = Field(default=3.0, ge=0.0, allow_inf_nan=False, description="perturbation guidance scale w")
    cfg: float | None = Field(default=None, ge=0.0, allow_inf_nan=False,
                              description="classifier-free guidance scale s (diffusers convention)")
    start: float = Field(default=0.0, ge=0.0, le=1.0, allow_inf_nan=False,
                         description="window start, fraction of steps (inclusive)")
    stop: float = Field(default=1.0, ge=0.0, le=1.0, allow_inf_nan=False,
                        description="window stop, fraction of steps (exclusive)")
    scope: Scope = Field(default="joint", description="identity scope: joint | image | pag_mask")

    @model_validator(mode="after")
    def _window_ordered(self) -> GuidanceSettings:
        if self.start > self.stop:
            raise ValueError(f"step window start={self.start:g} is after stop={self.stop:g}; "
                             "need 0 <= start <= stop <= 1")
        return self


class GenerationSettings(_Strict):
    """How every image of a search or an evaluation is made (shared by all its rows): the guidance settings
    (scale w, cfg, window, scope), the perturbation, the number of sampling steps and extra pipeline
    keyword arguments. The search's settings extend it."""

    guidance: GuidanceSettings = Field(default_factory=GuidanceSettings)
    perturbation: PerturbationSpec = Field(default_factory=PerturbationSpec)
    steps: int = Field(default=12, ge=1, description="sampling steps per image")
    pipeline_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments of the pipeline call")


class SearchProvenance(_SafeText):
    """How a searched head set was found: enough to rerun the search."""

    objective: str = Field(description="objective expression, e.g. 'digit-logprob' or 'harmonic(pickscore, clipscore)'")
    prompts: list[str] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=list)
    steps: int | None = Field(default=None, ge=1)
    rounds: int | None = Field(default=None, ge=1)
    top_k: int | None = Field(default=None, ge=1)
    strength: float | None = Field(default=None, ge=0.0, le=1.0)
    scale: float | None = Field(default=None, ge=0.0)
    cfg: float | None = Field(default=None, ge=0.0)
    candidates: int | None = Field(default=None, ge=0, description="size of the candidate pool")
    round_scores: list[list[float]] = Field(
        default_factory=list, description="per round, the mean objective of each added head's set"
    )
    baseline_score: float | None = None
    evaluation: dict[str, Any] = Field(default_factory=dict, description="fresh-seed evaluation figures")

    @field_validator("evaluation")
    @classmethod
    def _finite_evaluation(cls, evaluation: dict[str, Any]) -> dict[str, Any]:
        return finite_tree(evaluation, "evaluation")


class HeadSetMetadata(_SafeText):
    """Everything a head set carries besides its strengths."""

    _multiline: ClassVar[tuple[str, ...]] = ("description",)

    format_version: str = Field(default=CONSTANT_FORMAT_VERSION, pattern=r"^[0-9]{1,6}\.[0-9]{1,6}$",
                                description="1.x: no schedule; 2.x: a schedule (`intervals`)")
    name: str = Field(default="unnamed", min_length=1)
    description: str = ""
    architecture: str = Field(min_length=1, description="model family the sites belong to: sd3, flux, digits, ...")
    base_model: str | None = Field(default=None, description="Hub id or name of the model it was made for")
    sites: list[Site] = Field(min_length=1, description="the model's ordered sites; the paper layer index is the position")
    perturbation: PerturbationSpec = Field(default_factory=PerturbationSpec)
    guidance: GuidanceSettings = Field(default_factory=GuidanceSettings)
    origin: Literal["paper", "search", "manual", "atlas"] = Field(
        default="manual",
        description="paper: named in the paper; search: found by headhunter; manual: hand-made; "
                    "atlas: exported from a head atlas (heads with a measured effect)"
    )
    source: str | None = Field(default=None, description="where it comes from, e.g. 'paper Fig. 5' or a run directory")
    search: SearchProvenance | None = None
    library_version: str = __version__
    license: str | None = None
    tags: list[str] = Field(default_factory=list)
    intervals: list[tuple[float, float]] | None = Field(
        default=None, exclude_if=lambda value: value is None,  # so a 1.x head set's metadata is written as before
        description="format 2.x: the schedule's intervals of the noise level sigma, "
                                  "[[0, b1], [b1, b2], ..., [b(K-1), 1]] ([lo, hi) each, the top one closed at 1); "
                                  "tensor `<site>@<k>` holds interval k's strengths")

    @field_validator("intervals")
    @classmethod
    def _contiguous_intervals(cls, intervals: list[tuple[float, float]] | None) -> list[tuple[float, float]] | None:
        if intervals is None:
            return None
        from headhunter.errors import HeadSetError
        from headhunter.format.schedule import bounds_of

        try:
            bounds_of(intervals)
        except HeadSetError as exc:
            raise ValueError(str(exc)) from None
        return intervals

    @model_validator(mode="after")
    def _version_matches_schedule(self) -> HeadSetMetadata:
        major = format_major(self.format_version)
        if major >= 2 and self.intervals is None:
            raise ValueError(f"format {self.format_version} head sets list their intervals (metadata 'intervals')")
        if major < 2 and self.intervals is not None:
            raise ValueError(f"format {self.format_version} head sets hold no schedule; 'intervals' needs format 2.x")
        return self

    @field_validator("sites")
    @classmethod
    def _unique_sites(cls, sites: list[Site]) -> list[Site]:
        seen: set[str] = set()
        for site in sites:
            if site.name in seen:
                raise ValueError(f"site {site.name!r} listed twice")
            seen.add(site.name)
        return sites


M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], error: type[Exception], /, **values: Any) -> M:
    """`model(**values)`, with a pydantic ValidationError turned into `error` (a HeadhunterError subclass)
    whose message names every bad value and what is allowed (choices, or the numeric range). The one place
    user-supplied settings are checked: everything after reads the validated object."""
    try:
        return model(**values)
    except ValidationError as exc:
        raise error(describe_validation(exc, model)) from None


def plugin_params(model: type[M], error: type[Exception], what: str, params: Mapping[str, Any]) -> M:
    """A plugin's parameters (a perturbation's, an objective's) validated once: `model(**params)`.

    A bad or unknown parameter raises `error` naming `what` (e.g. "objective 'pickscore'"), every problem
    (`describe_validation`) and every allowed parameter with its default. Perturbation and objective base
    classes call this; a plugin's own `Params` model needs no error handling of its own.
    """
    try:
        return model(**params)
    except ValidationError as exc:
        allowed = ", ".join(
            f"{k} (required)" if f.is_required() else f"{k} (default {f.default!r})" for k, f in model.model_fields.items()
        ) or "none"
        raise error(f"bad parameters for {what}: {describe_validation(exc, model)}. Allowed: {allowed}") from None


def describe_validation(exc: ValidationError, model: type[BaseModel]) -> str:
    """One line per problem: `name=value: why; allowed: ...`."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err["loc"]]
        name = ".".join(loc) or model.__name__
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] in ("missing",):
            parts.append(f"{name} is required")
            continue
        if not loc:  # a model-level check (e.g. the step window)
            parts.append(msg)
            continue
        allowed = allowed_values(model, loc)
        if err["type"] == "extra_forbidden":
            owner = _model_at(model, loc[:-1])
            msg, allowed = "not a setting", ", ".join(owner.model_fields) if owner is not None else ""
        if err["type"] == "literal_error":
            msg = "not one of the choices"
        parts.append(f"{name}={err.get('input')!r}: {msg}" + (f"; allowed: {allowed}" if allowed else ""))
    return "; ".join(parts)


def _model_at(model: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    """The pydantic model a nested location `loc` (field names) points into, or None."""
    import typing

    current: Any = model
    for name in loc:
        field = getattr(current, "model_fields", {}).get(name)
        if field is None:
            return None
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def allowed_values(model: type[BaseModel], loc: list[str]) -> str:
    """The allowed values of the field at `loc`: its Literal choices or its numeric range."""
    import typing

    import annotated_types as at

    field = None
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            break
        field = fields[part]
        inner = [a for a in typing.get_args(field.annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        current = field.annotation if isinstance(field.annotation, type) else (inner[0] if inner else None)
    if field is None:
        return ""
    choices = [a for arg in (field.annotation, *typing.get_args(field.annotation))
               if typing.get_origin(arg) is Literal for a in typing.get_args(arg)]
    if choices:
        return ", ".join(repr(c) for c in choices)
    low, high, lo_open, hi_open = None, None, False, False
    for meta in field.metadata:
        if isinstance(meta, at.Ge):
            low = meta.ge
        elif isinstance(meta, at.Gt):
            low, lo_open = meta.gt, True
        elif isinstance(meta, at.Le):
            high = meta.le
        elif isinstance(meta, at.Lt):
            high, hi_open = meta.lt, True
    if low is None and high is None:
        return ""
    left = "(" if lo_open or low is None else "["
    right = ")" if hi_open or high is None else "]"
    kinds = typing.get_args(field.annotation) or (field.annotation,)
    finite = ", finite" if float in kinds else ""
    extra = " or None" if type(None) in kinds else ""
    return f"{left}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}{right}{finite}{extra}"


def format_major(version: str) -> int:
    """Major part of a format version string like '1.0'."""
    return int(version.split(".", 1)[0])
