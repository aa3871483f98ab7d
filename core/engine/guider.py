"""diffusers' guider API for head sets: `HeadHunterGuidance`, a `BaseGuidance` for modular pipelines.

diffusers' modular pipelines take their guidance from a guider object (`diffusers.guiders`). Every step
their denoise loop does (diffusers 0.42.1, e.g. `StableDiffusion3LoopDenoiser`):

    guider.set_state(step=i, num_inference_steps=N, timestep=t)
    batches = guider.prepare_inputs({"hidden_states": x, "encoder_hidden_states": (cond, uncond), ...})
    for batch in batches:                          # one transformer forward per batch
        guider.prepare_models(transformer); batch.noise_pred = transformer(**batch); guider.cleanup_models(transformer)
    pred = guider(batches).pred                    # -> forward(pred_cond=..., pred_uncond=..., ...)

`HeadHunterGuidance` asks for one batch per prediction (cond, uncond when CFG is on, one perturbed
conditional batch per active head set), or with `batched=True` for a single batch holding all of them
(the loop then runs one forward). For a batch with perturbed rows, `prepare_models` installs headhunter's
perturbing processors through the model adapter (`adapter.install`) with the rows' per-head strengths,
and `cleanup_models` removes them again; batches without perturbed rows run the stock transformer. The
combination is `uncond + s (cond - uncond) + sum_k w_k (cond - perturbed_k)` (guidance.guided_prediction).

Its config (`guider_config.json`) references head sets (file path, `preset:NAME`, or a Hub repo pinned to
the commit it was loaded from), never embeds them. Only this module imports diffusers' guider classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.guiders.guider_utils import BaseGuidance, GuiderOutput, rescale_noise_cfg
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from headhunter.format.loading import PRESET_PREFIX, looks_like_repo_id
from headhunter.plan.strengths import check_scope
from headhunter.errors import HeadSetError, HubError, ModelError
from headhunter.engine.guidance import NOT_PER_SAMPLE, guidance_delta
from headhunter.engine.hooks import bind_arguments
from headhunter.format.headset import HeadSet, load_headset_file
from headhunter.plan.plan import Branch, Plan, common_setting, compile_plan, in_window, resolve_branches, resolve_perturbation
from headhunter.plugin_system.registry import get_registry
from headhunter.format.files import read_json
from headhunter.format.schema import SCOPES, allowed_values, finite_tree
from headhunter.engine.attention import install
from headhunter.format.presets import load_preset
from headhunter.format.hub import download_headset
from headhunter.format.hub import download_file

if TYPE_CHECKING:
    from diffusers.modular_pipelines.modular_pipeline import BlockState

#: Prediction names handed to `forward`: the conditional, unconditional and k-th perturbed prediction.
COND, UNCOND, PERTURBED = "pred_cond", "pred_uncond", "pred_cond_perturbed_{}"
#: The identifier of the single batch that `batched=True` builds.
BATCHED = "pred_batched"
_REFERENCE_KEYS = frozenset({"source", "revision", "weight_name"})


# ----- head-set references ---------------------------------------------------------------------------------
def resolve_reference(item: Any) -> tuple[HeadSet, dict[str, Any]]:
    """Load one head set and return it with the reference a guider config stores for it.

    `item`: a HeadSet (kept in memory: such a guider cannot be saved), a string (existing file or folder,
    `preset:NAME`, or a Hub repo id `user/repo`, as `headhunter.load_headset`), or a dict
    `{"source": ..., "revision": ..., "weight_name": ...}` (revision/weight_name for Hub repos only).
    A Hub head set is recorded with `revision` = the commit it was read from (the snapshot folder of the
    cache), so a saved config keeps pointing at the same file after the repo changes. Raises HeadSetError
    naming the bad reference.
    """
    if isinstance(item, HeadSet):
        return item, {"source": None, "revision": None, "weight_name": None, "name": item.name}
    if isinstance(item, (str, Path)):
        ref: dict[str, Any] = {"source": str(item)}
    elif isinstance(item, Mapping):
        ref = dict(item)
        extra = set(ref) - _REFERENCE_KEYS - {"name"}
        if extra:
            raise HeadSetError(f"head-set reference {item!r} has unknown keys {sorted(extra)}; allowed: "
                               f"{', '.join(sorted(_REFERENCE_KEYS))}")
    else:
        raise HeadSetError(f"head set {item!r} must be a HeadSet, a path, 'preset:NAME', a Hub repo id or a "
                           "reference dict {'source', 'revision', 'weight_name'}")
    source, revision, weight_name = ref.get("source"), ref.get("revision"), ref.get("weight_name")
    if not isinstance(source, str) or not source:
        raise HeadSetError(f"head-set reference {item!r} has no source; a guider built from in-memory head sets "
                           "cannot be saved or reloaded: save the head set to a file or the Hub and pass that")
    if len(source) > MAX_SOURCE_CHARS:
        raise HeadSetError(f"head-set source of {len(source)} characters ({source[:40]!r}...); at most "
                           f"{MAX_SOURCE_CHARS} are allowed")
    exists = _exists(Path(source))
    hub = not exists and not source.startswith(PRESET_PREFIX) and looks_like_repo_id(source)
    if not hub and (revision is not None or weight_name is not None):
        raise HeadSetError(f"head set {source!r}: revision= and weight_name= are for Hub repo ids only")
    if exists:
        return load_headset_file(source), {"source": source, "revision": None, "weight_name": None}
    if source.startswith(PRESET_PREFIX):

        return load_preset(source[len(PRESET_PREFIX):]), {"source": source, "revision": None, "weight_name": None}
    if hub:

        path, filename = download_headset(source, weight_name=weight_name, revision=revision)
        try:
            headset = HeadSet.from_file(path)
        except HeadSetError as err:
            raise HeadSetError(f"{filename!r} in Hub repository {source!r} is not a head set: {err}") from None
        return headset, {"source": source, "revision": _snapshot_commit(path, revision), "weight_name": filename}
    raise HeadSetError(f"head set {source!r} not found: not an existing file or folder, not 'preset:NAME', "
                       "not a Hub repo id 'user/repo'")


def _snapshot_commit(path: Path, revision: str | None) -> str | None:
    """The commit hash of a file in the Hub cache (`.../snapshots/<commit>/<file>`)."""
    parts = Path(path).parts
    if "snapshots" in parts[:-1]:
        return parts[parts.index("snapshots") + 1]
    return revision


def _per_branch(value: Any, name: str, n: int, per_sample: bool = False) -> list[Any]:
    if value is None or isinstance(value, (int, float)):
        return [value] * n
    values = list(value)
    if len(values) != n:
        if per_sample:
            raise HeadSetError(f"{name}= has {len(values)} values; with per_sample=True the head sets form one "
                               "branch: pass one number")
        raise HeadSetError(f"{name}= has {len(values)} values for {n} head sets; pass one number or one per head set")
    return values


# ----- guider_config.json, checked before diffusers reads it ------------------------------------------------
#: Name of the guider's config file (diffusers' `config_name` for guiders).
CONFIG_NAME = "guider_config.json"
#: Largest guider config read (a saved one is well under 1 kB per head set).
MAX_CONFIG_BYTES = 1024 * 1024
#: Deepest JSON nesting in a guider config (a saved one is 3 deep; perturbation_params may nest a little).
MAX_CONFIG_DEPTH = 16
#: Most head sets (perturbed branches) one guider config may reference.
MAX_HEADSETS = 64
#: Longest head-set `source` (a path, `preset:NAME` or repo id); longer ones cannot be a file name here.
MAX_SOURCE_CHARS = 1024
#: Largest perturbed guidance scale w in a config (published settings use w <= 10).
MAX_SCALE = 1000.0

_Text = Annotated[str, Field(min_length=1, max_length=MAX_SOURCE_CHARS)]
_Name = Annotated[str, Field(min_length=1, max_length=256)]
_Scale = Annotated[float, Field(ge=0.0, le=MAX_SCALE, allow_inf_nan=False)]
_Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class _ConfigModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class HeadSetReference(_ConfigModel):
    """One head set of a guider config: `source` (a path, `preset:NAME` or a Hub repo id) and, for a repo,
    the `revision` (commit) and `weight_name` it was read from."""

    source: _Text
    revision: _Name | None = None
    weight_name: _Name | None = None


class GuiderConfig(_ConfigModel):
    """The schema of `guider_config.json` (strict: JSON types as written, no coercion; bounded; finite).

    Checked by `read_guider_config` before diffusers sees the file, so a damaged or hostile config is a
    HeadSetError naming the field and what is allowed, never an exception from diffusers or the standard library.
    """

    headsets: list[HeadSetReference | _Text | None] = Field(min_length=1, max_length=MAX_HEADSETS)
    perturbed_guidance_scale: _Scale | list[_Scale] | None = None
    perturbed_guidance_start: _Fraction | list[_Fraction] | None = None
    perturbed_guidance_stop: _Fraction | list[_Fraction] | None = None
    scope: Literal["joint", "image", "pag_mask"] | None = None
    perturbation: _Name | None = None
    perturbation_params: dict[str, Any] | None = None
    guidance_scale: _Scale | None = None
    guidance_rescale: _Fraction = 0.0
    use_original_formulation: bool = False
    batched: bool = False
    per_sample: bool = False
    start: Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)] = 0.0  # diffusers: 0 <= start < 1
    stop: _Fraction = 1.0
    enabled: bool = True
    class_name: Literal["HeadHunterGuidance"] = Field(default="HeadHunterGuidance", alias="_class_name")
    diffusers_version: _Name | None = Field(default=None, alias="_diffusers_version")
    use_default_values: list[_Name] | None = Field(default=None, alias="_use_default_values", max_length=64)

    @field_validator("perturbation_params")
    @classmethod
    def _finite_params(cls, params: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if params is None else finite_tree(params, "perturbation_params")

    @model_validator(mode="after")
    def _consistent(self) -> GuiderConfig:
        if not self.per_sample and any(h is None for h in self.headsets):
            raise ValueError("headsets holds null: an unguided row (null) is allowed only with per_sample true")
        if all(h is None for h in self.headsets):
            raise ValueError("headsets names no head set (every entry is null)")
        n = 1 if self.per_sample else len(self.headsets)
        for name in ("perturbed_guidance_scale", "perturbed_guidance_start", "perturbed_guidance_stop"):
            value = getattr(self, name)
            if isinstance(value, list) and len(value) != n:
                what = "with per_sample (one branch); give one number" if self.per_sample else \
                    f"for {n} head sets; give one number or one per head set"
                raise ValueError(f"{name} has {len(value)} values {what}")
        if self.start > self.stop:
            raise ValueError(f"CFG window start={self.start:g} is after stop={self.stop:g}; need 0 <= start <= stop <= 1")
        return self


def read_guider_config(path: str | Path) -> dict[str, Any]:
    """A `guider_config.json` read through the bounded reader (regular file, at most MAX_CONFIG_BYTES and
    MAX_CONFIG_DEPTH deep, finite numbers, UTF-8) and checked against `GuiderConfig`; returns the JSON object.

    Raises HeadSetError naming the file, the field and what is allowed.
    """
    data = read_json(path, max_bytes=MAX_CONFIG_BYTES, error=HeadSetError, what="guider config",
                     max_depth=MAX_CONFIG_DEPTH)
    if not isinstance(data, dict):
        raise HeadSetError(f"guider config {path} must hold a JSON object, not {_json_kind(data)}")
    try:
        GuiderConfig.model_validate(data)
    except ValidationError as exc:
        raise HeadSetError(f"guider config {path}: {_describe(exc)}") from None
    return data


def _describe(exc: ValidationError) -> str:
    """The first few problems, one per field: `field=value (shortened): why; allowed: range/choices`."""
    parts: dict[str, str] = {}
    for err in exc.errors():
        # pydantic names union members in the location (`HeadSetReference`, `list[constrained-float]`): drop them
        loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and (p != p.lower() or "-" in p or "[" in p
                                                                         or p in ("str", "float", "int", "bool")))]
        name = ".".join(loc) or "(the whole config)"
        if len(parts) >= 4 or any(name == n or name.startswith(n + ".") or n.startswith(name + ".") for n in parts):
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            parts[name] = f"{name} is required"
            continue
        shown = repr(err.get("input"))
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        allowed = allowed_values(GuiderConfig, loc[:1]) if loc else ""
        parts[name] = (f"{name}={shown}: {msg}" if loc else msg) + (f"; allowed: {allowed}" if allowed else "")
    return "; ".join(parts.values())


def _json_kind(value: Any) -> str:
    return {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "an array"}.get(type(value), type(value).__name__)


#: Keyword arguments of `from_pretrained` that say where the config is (the rest go to `from_config`).
_LOCATION_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision")
#: diffusers' loading keywords that mean nothing for a guider config (accepted and ignored, as diffusers does).
_IGNORED_KWARGS = ("proxies", "output_loading_info", "user_agent", "_commit_hash", "return_commit_hash",
                   "torch_dtype", "variant", "use_safetensors", "low_cpu_mem_usage", "device_map")


def _config_file(where: str | Path, subfolder: str | None, options: dict[str, Any]) -> Path:
    """The guider_config.json that `from_pretrained(where, subfolder=...)` means: a file, a folder (or its
    subfolder) holding one, or a Hub repo's (downloaded into the cache)."""
    text = str(where)
    if len(text) > MAX_SOURCE_CHARS:
        raise HeadSetError(f"guider location of {len(text)} characters; at most {MAX_SOURCE_CHARS} are allowed")
    path = Path(text)
    if _exists(path):
        if path.is_file():
            return path
        for folder in ([path / subfolder] if subfolder else []) + [path]:
            if _exists(folder / CONFIG_NAME):
                return folder / CONFIG_NAME
        raise HeadSetError(f"no {CONFIG_NAME} in {path}{' (or its subfolder ' + repr(subfolder) + ')' if subfolder else ''}")
    if looks_like_repo_id(text):

        return download_file(text, CONFIG_NAME, subfolder=subfolder, **options)
    raise HeadSetError(f"guider {text!r} not found: not an existing file or folder, not a Hub repo id 'user/repo'")


def _exists(path: Path) -> bool:
    """Path.exists that answers False for a name the OS refuses (ENAMETOOLONG, NUL byte) instead of raising."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


# ----- the guider ------------------------------------------------------------------------------------------
#: Transformer inputs that are never per-sample, whatever their first dimension (position ids, options, per-layer
#: values): the engine's list.
_SHARED_INPUTS = NOT_PER_SAMPLE


def _repeat_rows(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any], n: int, copies: int) -> dict[str, Any]:
    """The call's keyword arguments with every per-sample tensor of `n` rows repeated `copies` times along dim 0
    (block-major: [x | x | ...], the order the guider concatenated its batches in)."""
    bound = bind_arguments(module, args, kwargs)
    return {k: (v.repeat(copies, *([1] * (v.ndim - 1)))
                if k not in _SHARED_INPUTS and isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == n else v)
            for k, v in bound.items()}


class HeadHunterGuidance(BaseGuidance):
    """Head-level perturbation guidance (HeadHunter / SoftPAG, Ahn et al. 2025) as a diffusers guider.

    `pred = uncond + s (cond - uncond) + sum_k w_k (cond - perturbed_k)`, the perturbed passes using the
    conditional inputs with head set k's heads perturbed (paper Eq. 5 with CFG, as `headhunter.apply`).
    Without CFG (`guidance_scale=1`, diffusers' rule) it is `cond + sum_k w_k (cond - perturbed_k)`.

    Args:
        headsets: one head set or a list (a HeadSet, a path, `preset:NAME`, a Hub repo id, or a dict
            `{"source", "revision", "weight_name"}`); each is its own perturbed branch.
        perturbed_guidance_scale, perturbed_guidance_start, perturbed_guidance_stop: w_k and the step window
            `[start, stop)` of each branch; one number for all or one per head set; None takes each head set's
            recommendation (`metadata.guidance`). Step i of N is guided iff `start <= i / N < stop`.
        scope (`joint` | `image` | `pag_mask`), perturbation (a registered name), perturbation_params:
            None takes the head sets' metadata, which must then agree.
        guidance_scale: CFG scale s (diffusers convention); None takes the head sets' recommended `cfg` when they
            give one, else 1.0 (CFG off). `guidance_rescale`, `use_original_formulation`: as diffusers' CFG guider.
        batched: False (diffusers' contract) asks the loop for one forward per prediction; True for one forward
            of all rows `[cond | uncond | perturbed_0 | ...]` (every guider input must then be per-sample; latents
            the loop passes to the transformer itself, one copy, are repeated once per prediction: Wan, FLUX.2).
        per_sample: `headsets` has one entry per conditional row of the loop's batch (prompts x images per
            prompt, in the loop's row order), all in one perturbed branch, as `apply(..., per_sample=True)`; a
            None entry leaves its row unguided (its term is exactly 0). One number each for the scale and window.
            A batch with another number of rows is refused (ModelError) before its forward.
        start, stop: the CFG window, same rule as the branches; enabled: as every diffusers guider.

    Raises HeadSetError (bad reference or setting, head sets that disagree or do not fit the model) and
    ModelError (a transformer no adapter recognises, a batch layout that does not split). The resolved values
    are what `config` holds, so a saved `guider_config.json` states exactly what runs.
    """

    _input_predictions = [COND, UNCOND, PERTURBED.format(0)]

    @register_to_config
    def __init__(
        self,
        headsets: Any = (),
        perturbed_guidance_scale: float | Sequence[float] | None = None,
        perturbed_guidance_start: float | Sequence[float] | None = None,
        perturbed_guidance_stop: float | Sequence[float] | None = None,
        scope: str | None = None,
        perturbation: str | None = None,
        perturbation_params: Mapping[str, Any] | None = None,
        guidance_scale: float | None = None,
        guidance_rescale: float = 0.0,
        use_original_formulation: bool = False,
        batched: bool = False,
        per_sample: bool = False,
        start: float = 0.0,
        stop: float = 1.0,
        enabled: bool = True,
    ):
        super().__init__(start, stop, enabled)
        if not isinstance(per_sample, bool):
            raise HeadSetError(f"per_sample={per_sample!r} must be True or False")
        items = [headsets] if isinstance(headsets, (HeadSet, str, Path, Mapping)) else list(headsets)
        if not items:
            raise HeadSetError("HeadHunterGuidance needs at least one head set (headsets=...)")
        if not per_sample and any(item is None for item in items):
            raise HeadSetError("headsets holds None: None marks an unguided row only with per_sample=True")
        loaded = [None if item is None else resolve_reference(item) for item in items]
        rows = [None if entry is None else entry[0] for entry in loaded]
        heads = [hs for hs in rows if hs is not None]
        if not heads:
            raise HeadSetError("per_sample=True needs at least one head set among headsets; every entry is None "
                               "(an unguided row)")
        for hs in heads:
            if len(hs) == 0:
                raise HeadSetError(f"head set {hs.name!r} selects no heads; nothing to guide with")
        names = [hs.name for hs in heads]
        architectures = {hs.metadata.architecture for hs in heads}
        if len(architectures) > 1:
            raise HeadSetError(f"head sets {names} were made for different architectures {sorted(architectures)}")
        if scope is None:
            scope = common_setting([hs.metadata.guidance.scope for hs in heads], "scope", names)
        if scope not in SCOPES:
            raise HeadSetError(f"scope={scope!r} is not allowed; allowed: {', '.join(SCOPES)}")
        if perturbation is not None and not isinstance(perturbation, str):
            raise HeadSetError(f"perturbation={perturbation!r} must be a registered name (a guider config stores "
                               "names, not objects)")
        pert = resolve_perturbation(perturbation, perturbation_params, heads, names, get_registry())
        check_scope(pert, scope)
        n = 1 if per_sample else len(heads)
        scales = _per_branch(perturbed_guidance_scale, "perturbed_guidance_scale", n, per_sample)
        starts = _per_branch(perturbed_guidance_start, "perturbed_guidance_start", n, per_sample)
        stops = _per_branch(perturbed_guidance_stop, "perturbed_guidance_stop", n, per_sample)
        if per_sample:  # one branch whose row i is perturbed by rows[i] (apply(per_sample=True)'s rule)
            branches = resolve_branches(rows, scales[0], starts[0], stops[0], per_sample=True, scope=scope)
        else:
            branches = resolve_branches(heads, scales, starts, stops, scope=scope)
        if guidance_scale is None:
            cfgs = [hs.metadata.guidance.cfg for hs in heads]
            guidance_scale = common_setting(cfgs, "cfg (pass guidance_scale=)", names) if all(c is not None for c in cfgs) \
                else 1.0
        for value, name in ((guidance_scale, "guidance_scale"), (guidance_rescale, "guidance_rescale")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise HeadSetError(f"{name}={value!r} must be a finite number >= 0")
        if not isinstance(batched, bool):
            raise HeadSetError(f"batched={batched!r} must be True or False")

        self.guidance_scale = float(guidance_scale)
        self.guidance_rescale = float(guidance_rescale)
        self.use_original_formulation = bool(use_original_formulation)
        self.batched = batched
        self.per_sample = per_sample
        self._rows = rows
        self._given = heads
        self._row_scales: dict[tuple, torch.Tensor] = {}
        self.scope = scope
        self.perturbation = pert
        self.branches: list[Branch] = branches
        self._references = [None if entry is None else entry[1] for entry in loaded]
        self._conditions: list[tuple[str, int, int | None]] = []  # (prediction name, tuple index, branch)
        self._plans: dict[tuple, Plan] = {}
        self._installation: Any = None
        self._hook: Any = None
        self._after: Any = None
        self._batched_rows: int | None = None
        self.register_to_config(
            headsets=[None if ref is None else {k: v for k, v in ref.items() if k != "name"}
                      for ref in self._references],
            perturbed_guidance_scale=[b.scale for b in branches],
            perturbed_guidance_start=[b.start for b in branches],
            perturbed_guidance_stop=[b.stop for b in branches],
            scope=scope, perturbation=pert.name, perturbation_params=pert.params.model_dump(),
            guidance_scale=self.guidance_scale,
        )
        # the resolved values are the config now, not defaults to be re-derived by from_config
        resolved = {"headsets", "perturbed_guidance_scale", "perturbed_guidance_start", "perturbed_guidance_stop",
                    "scope", "perturbation", "perturbation_params", "guidance_scale"}
        defaults = self.config.get("_use_default_values")
        if defaults is not None:
            self.register_to_config(_use_default_values=[k for k in defaults if k not in resolved])

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path | None = None, subfolder: str | None = None,
                        return_unused_kwargs: bool = False, **kwargs: Any) -> Any:
        """A guider from a `guider_config.json` in a file, a folder (`subfolder=`) or a Hub repo (diffusers'
        `from_pretrained`; `revision`, `cache_dir`, `token`, `local_files_only`, `force_download` say where).

        The file is read through headhunter's bounded reader and checked against `GuiderConfig` before diffusers
        parses it: a damaged, hostile or hand-edited config raises HeadSetError naming the field and what is
        allowed (HubError when the repo or file cannot be fetched)."""
        if pretrained_model_name_or_path is None:
            raise HeadSetError("HeadHunterGuidance.from_pretrained needs a folder, a guider_config.json or a Hub repo id")
        options = {k: kwargs.pop(k) for k in _LOCATION_KWARGS if k in kwargs}
        for key in _IGNORED_KWARGS:
            kwargs.pop(key, None)
        config = read_guider_config(_config_file(pretrained_model_name_or_path, subfolder, options))
        return cls.from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def new(self, **kwargs: Any) -> HeadHunterGuidance:
        """A copy with some settings changed (diffusers' `new`); head sets given as objects are passed on."""
        config = dict(self.config)
        if "headsets" not in kwargs:
            config["headsets"] = [None if ref is None else hs if ref["source"] is None
                                  else {k: v for k, v in ref.items() if k != "name"}
                                  for hs, ref in zip(self._rows, self._references)]
        return self.__class__.from_config(config, **kwargs)

    # ----- what runs at this step -----------------------------------------------------------------------
    @property
    def headsets(self) -> list[HeadSet]:
        """The loaded head sets, one per branch (`per_sample`: one per conditional row, None for an unguided row)."""
        return list(self._rows)

    def _in_window(self, start: float, stop: float) -> bool:
        if self._num_inference_steps is None or self._step is None:
            return True
        return in_window(self._step, self._num_inference_steps, start, stop)

    def _is_cfg_enabled(self) -> bool:
        if not self._enabled:
            return False
        off = math.isclose(self.guidance_scale, 0.0 if self.use_original_formulation else 1.0)
        return not off and self._in_window(self._start, self._stop)

    def _active_branches(self) -> list[int]:
        """The branches guiding this step (w != 0, inside their window, and, for a head set with a schedule,
        with heads at this step's noise level sigma): only these get a perturbed pass."""
        if not self._enabled:
            return []
        sigma = self._sigma()
        return [k for k, b in enumerate(self.branches) if b.guides and self._in_window(b.start, b.stop)
                and (sigma is None or any(not hs.scheduled or len(hs.at(sigma)) > 0
                                          for hs in (b.per_row or (b.headset,)) if hs is not None))]

    def _sigma(self) -> float | None:
        """This step's noise level sigma when a head set holds a schedule (None otherwise, or before
        `set_state`): the timestep diffusers' denoise loop hands `set_state`, over 1000 (flow-matching
        schedulers step through `timestep = 1000 sigma`, `num_train_timesteps = 1000`). The timestep is a
        tensor: reading it is one scalar device read per step, and only for head sets with a schedule."""
        if self._timestep is None or not any(hs.scheduled for hs in self._given):
            return None
        t = self._timestep
        value = float(t.flatten()[0]) if isinstance(t, torch.Tensor) else float(t)
        sigma = value / 1000.0
        if not 0.0 <= sigma <= 1.0:
            raise ModelError(f"HeadHunterGuidance: timestep {value:g} is not 1000 sigma for a noise level sigma in "
                             "[0, 1]; head sets with a schedule need a flow-matching scheduler with "
                             "num_train_timesteps=1000")
        return sigma

    @property
    def num_conditions(self) -> int:
        """Predictions this step needs: cond, uncond (CFG on), one perturbed per active head set."""
        return 1 + int(self._is_cfg_enabled()) + len(self._active_branches())

    @property
    def is_conditional(self) -> bool:
        """Whether the batch being prepared holds conditional rows (every batch but the unconditional one)."""
        index = self._count_prepared - 1
        if not self._conditions or not 0 <= index < len(self._conditions) or self.batched:
            return True
        return self._conditions[index][1] == 0

    # ----- the guider contract ------------------------------------------------------------------------------
    def _plan_conditions(self) -> list[tuple[str, int, int | None]]:
        conditions: list[tuple[str, int, int | None]] = [(COND, 0, None)]
        if self._is_cfg_enabled():
            conditions.append((UNCOND, 1, None))
        conditions += [(PERTURBED.format(k), 0, k) for k in self._active_branches()]
        self._conditions = conditions
        return conditions

    def prepare_inputs(self, data: dict[str, Any]) -> list[BlockState]:
        """One batch per prediction (tuple values are `(cond, uncond)`; the perturbed batches take the
        conditional entry), or with `batched=True` one batch with all of them concatenated along dim 0."""
        batches = [self._prepare_batch(data, index, name) for name, index, _ in self._plan_conditions()]
        return self._merged(batches)

    def prepare_inputs_from_block_state(self, data: BlockState, input_fields: dict[str, Any]) -> list[BlockState]:
        """As `prepare_inputs`, reading `input_fields` (name -> attribute or (cond, uncond) attributes) of `data`."""
        batches = [self._prepare_batch_from_block_state(input_fields, data, index, name)
                   for name, index, _ in self._plan_conditions()]
        return self._merged(batches)

    def _merged(self, batches: list[BlockState]) -> list[BlockState]:
        if not self.batched or len(batches) == 1:
            return batches
        from diffusers.modular_pipelines.modular_pipeline import BlockState

        fields: dict[str, Any] = {}
        for key, value in batches[0].as_dict().items():
            if key == self._identifier_key:
                continue
            values = [getattr(b, key) for b in batches]
            if all(v is None for v in values):
                fields[key] = None  # an optional input left out (e.g. no text mask)
                continue
            if not all(isinstance(v, torch.Tensor) and v.ndim >= 1 for v in values):
                raise ModelError(f"batched=True needs every guider input to be a per-sample tensor; {key!r} is "
                                 f"{type(value).__name__}; use batched=False")
            fields[key] = torch.cat(values)
        sizes = {v.shape[0] for v in fields.values() if v is not None}
        if len(sizes) != 1:
            raise ModelError(f"batched=True needs every guider input to have the same batch size; got {sorted(sizes)}")
        self._batched_rows = sizes.pop()
        fields[self._identifier_key] = BATCHED
        return [BlockState(**fields)]

    def prepare_models(self, denoiser: torch.nn.Module) -> None:
        """Before a batch's forward: for a batch with perturbed rows, install the perturbing processors on
        `denoiser` (the transformer) through its adapter, with per-row strengths set from the forward's batch
        size when it is called. Batches without perturbed rows leave the model stock."""
        self._count_prepared += 1
        self._remove()  # a previous forward that raised before cleanup_models left ours installed
        blocks = self._blocks(self._count_prepared - 1)
        if not any(k is not None for k in blocks):
            return
        adapter = get_registry().adapter_for(denoiser)
        plan = self._plan(denoiser, adapter)
        transformer = adapter.transformer(denoiser)
        self._installation = install(adapter, denoiser, plan.perturbation, plan.scope)
        self._hook = transformer.register_forward_pre_hook(self._set_rows(plan, blocks), with_kwargs=True,
                                                           prepend=True)
        self._after = transformer.register_forward_hook(self._after_forward, with_kwargs=True, always_call=True)

    def cleanup_models(self, denoiser: torch.nn.Module) -> None:
        """After a batch's forward: remove what `prepare_models` installed (the original processors come back,
        so outputs are bit-identical to stock)."""
        self._remove()

    def _plan(self, denoiser: torch.nn.Module, adapter: Any) -> Plan:
        """The head sets and settings compiled for this model (`headhunter.plan.plan`), once per model structure
        (architecture and site shapes, not object identity); compiling checks the head sets fit (HeadSetError)."""
        sites = adapter.sites(denoiser)
        key = (adapter.architecture, tuple((s.name, s.num_heads) for s in sites))
        if key not in self._plans:
            self._plans[key] = compile_plan(denoiser, self.headsets, settings=[b.guidance for b in self.branches],
                                            per_sample=self.per_sample,
                                            scope=self.scope, perturbation=self.perturbation, adapter=adapter)
        return self._plans[key]

    def _blocks(self, batch: int) -> tuple[int | None, ...]:
        """The branch of each row block of batch `batch` (None: unperturbed)."""
        if not self._conditions:
            return (None,)
        if self.batched:
            return tuple(k for _, _, k in self._conditions)
        if batch >= len(self._conditions):
            raise ModelError(f"prepare_models was called {batch + 1} times this step but prepare_inputs made "
                             f"{len(self._conditions)} batches")
        return (self._conditions[batch][2],)

    def _set_rows(self, plan: Plan, blocks: tuple[int | None, ...]) -> Any:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
            new_kwargs = None
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            if not isinstance(hidden, torch.Tensor):
                raise ModelError("HeadHunterGuidance: the transformer was called without a hidden_states tensor")
            n = hidden.shape[0]
            if self.batched and len(blocks) > 1 and n * len(blocks) == self._batched_rows:
                # the loop passes the latents (and timestep) around the guider, one copy (diffusers' Wan, FLUX.2
                # and FLUX loops): every prediction of the batch takes the same latents, so they are repeated
                # once per prediction, like the guider's own inputs were concatenated
                new_kwargs = _repeat_rows(module, args, kwargs, n, len(blocks))
                n = self._batched_rows
            if self.batched and len(blocks) > 1 and n != self._batched_rows:
                raise ModelError(
                    f"batched=True: the guider prepared {self._batched_rows} rows but the transformer got hidden_states "
                    f"with {n}; this denoise loop passes hidden_states around the guider (diffusers' Wan and FLUX.2 "
                    "loops do), so its predictions cannot share one forward: use batched=False")
            if n % len(blocks):
                raise ModelError(f"a batch of {n} rows does not split into {len(blocks)} equal blocks "
                                 "(cond, uncond, perturbed ...); give every guider input the same batch size")
            groups = tuple(-1 if k is None else k for k in blocks)
            sigma = self._sigma() if plan.scheduled else None
            segment = 0 if sigma is None else plan.segment_of(sigma)
            strengths = plan.strengths(groups, n // len(blocks), hidden.device, hidden.dtype, segment)  # once per layout
            strengths.prepared.clear()  # one installation per forward: nothing to reuse, nothing to keep alive
            self._installation.set_strengths(strengths)
            return None if new_kwargs is None else ((), new_kwargs)

        return hook

    def _after_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        """Runs after the forward even when it raised (torch passes output=None then): a forward that failed
        leaves the model stock at once, not at the next prepare_models."""
        if output is None:
            self._remove(keep_after=True)  # torch is iterating the forward hooks now; this one goes later

    def _remove(self, keep_after: bool = False) -> None:
        if self._after is not None and not keep_after:
            self._after.remove()
            self._after = None
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._installation is not None:
            installation, self._installation = self._installation, None
            installation.remove()

    # ----- combining the predictions ------------------------------------------------------------------------
    def _scale(self, k: int, like: torch.Tensor) -> float | torch.Tensor:
        """Branch k's w: a number, or for the per-sample branch a `[rows, 1, ...]` tensor shaped for `like` (0 for
        an unguided row; ModelError when the batch has another number of rows), made once per layout."""
        branch = self.branches[k]
        if branch.per_row is None:
            return branch.scale
        key = (like.shape[0], like.ndim, str(like.device), like.dtype)
        if key not in self._row_scales:
            values = [0.0 if hs is None else branch.scale for hs in branch.row_headsets(like.shape[0])]
            shape = (like.shape[0],) + (1,) * (like.ndim - 1)
            self._row_scales[key] = torch.tensor(values, dtype=like.dtype).view(shape).to(like.device)
        return self._row_scales[key]

    def __call__(self, data: list[BlockState]) -> GuiderOutput:
        """The guided prediction from the batches `prepare_inputs` made, each with its `noise_pred` set."""
        if not all(hasattr(d, "noise_pred") for d in data):
            raise ValueError("Expected all data to have `noise_pred` attribute.")
        names = [name for name, _, _ in self._conditions]
        if len(data) == 1 and getattr(data[0], self._identifier_key) == BATCHED:
            pred = data[0].noise_pred
            if pred.shape[0] % len(names):
                raise ModelError(f"batched prediction of {pred.shape[0]} rows does not split into {len(names)}")
            return self.forward(**dict(zip(names, pred.chunk(len(names)))))
        if len(data) != len(names):
            raise ValueError(f"Expected {len(names)} data items, but got {len(data)}. Please check the input data.")
        return self.forward(**{getattr(d, self._identifier_key): d.noise_pred for d in data})

    def forward(self, pred_cond: torch.Tensor, pred_uncond: torch.Tensor | None = None,
                **perturbed: torch.Tensor) -> GuiderOutput:
        """`uncond + s (cond - uncond) + sum_k w_k (cond - perturbed_k)` (paper Eq. 5 with CFG, diffusers' CFG
        convention; `cond + s (cond - uncond) + ...` with `use_original_formulation`), then diffusers'
        `rescale_noise_cfg` when `guidance_rescale > 0`. All predictions are tensors of one shape (the model's
        output for the batch, e.g. [B, C, H, W]); `perturbed` holds `pred_cond_perturbed_<k>` for the active head
        sets (k = index in `headsets`); with `per_sample` the one branch's w is 0 on the unguided rows. Returns
        diffusers' `GuiderOutput(pred, pred_cond, pred_uncond)`."""
        if pred_uncond is None:
            pred = pred_cond
        else:
            shift = pred_cond - pred_uncond
            pred = (pred_cond if self.use_original_formulation else pred_uncond) + self.guidance_scale * shift
        if perturbed:
            keys = sorted(perturbed, key=lambda name: int(name.rsplit("_", 1)[1]))
            ws = [self._scale(int(name.rsplit("_", 1)[1]), pred_cond) for name in keys]
            pred = pred + guidance_delta(pred_cond, [perturbed[name] for name in keys], ws)
        if self.guidance_rescale > 0.0:
            pred = rescale_noise_cfg(pred, pred_cond, self.guidance_rescale)
        return GuiderOutput(pred=pred, pred_cond=pred_cond, pred_uncond=pred_uncond)

    # ----- saving and sharing -------------------------------------------------------------------------------
    def _check_saveable(self, shared: bool) -> None:
        for ref in self._references:
            if ref is None:  # an unguided row of a per-sample guider
                continue
            if ref["source"] is None:
                raise HeadSetError(f"head set {ref['name']!r} was given as an object; a guider config references "
                                   "head sets: save it (HeadSet.save) or push it (HeadSet.push_to_hub) and pass the "
                                   "path or repo id instead")
            if shared and not (ref["source"].startswith(PRESET_PREFIX) or ref["revision"] is not None):
                raise HubError(f"head set {ref['source']!r} is a local file; a guider pushed to the Hub must reference "
                               "head sets others can fetch: push it with HeadSet.push_to_hub and pass the repo id")

    def save_pretrained(self, save_directory: str | Path, push_to_hub: bool = False, **kwargs: Any) -> None:
        """Write `guider_config.json` (head sets referenced: path, `preset:NAME`, or Hub repo + commit).

        Raises HeadSetError for a head set given as an in-memory object (it has no reference)."""
        self._check_saveable(shared=push_to_hub)
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    def push_to_hub(self, repo_id: str, *args: Any, **kwargs: Any) -> str:
        """diffusers' `push_to_hub` (e.g. `subfolder="guider"`), refusing head sets others cannot fetch (HubError
        for a local file, HeadSetError for an in-memory one)."""
        self._check_saveable(shared=True)
        return super().push_to_hub(repo_id, *args, **kwargs)


__all__ = ["HeadHunterGuidance", "resolve_reference"]
