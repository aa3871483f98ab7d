"""A model's search defaults, typed: what `hunt` and `atlas` use for a model when not told otherwise.

Plugins answer the `search_defaults` hook with a plain dict (the registry checks its keys against
`headhunter.plugin_system.registry.SEARCH_DEFAULT_KEYS`); `model_defaults` validates that dict into a
`SearchDefaults` once, so the workflows read typed fields and a plugin's wrong type is one PluginError
naming the field. Every field left as None means "no default": the workflow's own fallback applies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator

from headhunter.errors import PluginError
from headhunter.format.schema import describe_validation
from headhunter.plugin_system.registry import get_registry


class AtlasDefaults(BaseModel):
    """The atlas's own defaults (the `atlas` key): prompts and seeds of the atlas, objectives also measured,
    strength/scale/steps, measure words (`{measure: (word up, word down)}`), and an optional classifier
    (`classes`: its name, `classify(images) -> labels`) for the "changes the class" measure."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    prompts: list[str] | None = None
    seeds: list[int] | None = None
    objectives: list[str] | None = None
    strength: float | None = None
    scale: float | None = None
    steps: int | None = None
    words: dict[str, tuple[str | None, str | None]] = Field(default_factory=dict)
    classes: str | None = None
    classify: Callable[..., Any] | None = None

    @model_validator(mode="after")
    def _classifier_whole(self) -> AtlasDefaults:
        if (self.classes is None) != (self.classify is None):
            raise ValueError("give 'classes' (a name) and 'classify' (a function) together")
        return self


class SearchDefaults(BaseModel):
    """A model's defaults for `hunt` (and, under `atlas`, for `atlas`)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, populate_by_name=True)

    objective: Any = None
    prompts: list[str] | None = None
    seeds: list[int] | None = None
    eval_seeds: list[int] | None = None
    eval_prompts: list[str] | None = None
    metrics: list[str] = Field(default_factory=list)
    set_metrics: dict[str, Callable[..., Any]] = Field(default_factory=dict)
    rounds: int | None = None
    top_k: int | None = None
    strength: float | None = None
    scale: float | None = None
    steps: int | None = None
    allocation: str | None = Field(default=None, validation_alias=AliasChoices("allocation", "schedule"))
    budget: float | None = None
    first_pairs: int | None = None
    atlas: AtlasDefaults = Field(default_factory=AtlasDefaults)

    def value(self, name: str, fallback: Any) -> Any:
        """The default for `name`, or `fallback` when the model gives none."""
        given = getattr(self, name)
        return fallback if given is None else given


def model_defaults(model: Any) -> SearchDefaults:
    """The plugins' search defaults for `model`, validated (empty when no plugin knows the model).
    PluginError naming the model and the bad field."""
    raw = get_registry().search_defaults(model)
    try:
        return SearchDefaults.model_validate(raw)
    except ValidationError as err:
        raise PluginError(f"the search defaults given for {type(model).__name__} are invalid: "
                          f"{describe_validation(err, SearchDefaults)}") from None
