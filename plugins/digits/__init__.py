"""Built-in plugin: the embedded demo model ``digits`` and its classifier objectives.

``headhunter.load_model("digits")`` returns a ``DigitsPipeline``: a small SD3 MMDiT (6 joint blocks x 8
heads x 16 dims) trained by the project on scikit-learn's real handwritten digits, with the call protocol of
``StableDiffusion3Pipeline``. The objectives score samples with a CNN classifier trained on the training
split. The model card is docs/digits.md. torch and diffusers load on first use, so registering this plugin
costs nothing. The search defaults of the demo come from the `search_defaults` hook, like any plugin's.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from headhunter.plugin_system.hookspecs import Register, hookimpl

#: name -> (class in .objectives, description)
OBJECTIVES: dict[str, tuple[str, str]] = {
    "digit-logprob": ("DigitLogProb", "log p(prompted digit) under the digits classifier (max log p for ''); "
                                      "does not saturate: the default for searches on the digits model"),
    "digit-confidence": ("DigitConfidence", "p(prompted digit) under the digits classifier (max p for '')"),
    "digit-accuracy": ("DigitAccuracy", "1 if the digits classifier's top class is the prompted digit "
                                        "(for '': if max p > 0.5), else 0"),
}


#: Objectives defined by the grammar (name -> (expression, description)), registered like the others.
#: `digit-sharpness` is the demo's: a style property on which single heads measurably differ, with the digit
#: kept. Chosen from an atlas on seeds 20000-20031 (disjoint from the demo's search seeds 0-63 and evaluation
#: seeds 10000-10127; docs/search.md "The demo's objective"): per-head sharpness effects replicate across
#: split halves (r = 0.99) and the composite's too (r = 0.97), where digit-logprob's do not (r = 0.14).
COMPOSITES: dict[str, tuple[str, str]] = {
    "digit-sharpness": ("sharpness + 0.02*digit-confidence",
                        "sharper strokes with the digit kept: variance of the Laplacian + 0.02 x p(digit); "
                        "the demo's objective (single heads measurably differ on it)"),
}


#: What `headhunter hunt` does on this model when not told otherwise: the paper's unconditional setting
#: (prompt ""), an objective on which heads measurably differ, judged on fresh seeds and on the ten digit
#: prompts the search never saw, with the independent yardsticks for the report. (digit-logprob, the
#: previous default, is the documented null result: single heads are noise on it.)
DEMO_DEFAULTS: dict[str, Any] = {
    "objective": "digit-sharpness",
    "prompts": [""],
    "eval_prompts": [str(d) for d in range(10)],
    "seeds": list(range(64)),
    "schedule": "racing",
    "budget": 0.5,
    "first_pairs": 8,
    "eval_seeds": list(range(10_000, 10_128)),
    "metrics": ["digit-confidence"],
    "rounds": 1,
    "top_k": 2,
    "strength": 1.0,
    "scale": 2.0,
    "steps": 12,
}


#: What `headhunter atlas` does on this model when not told otherwise (the `atlas` key of its search
#: defaults): 48 heads + 6 layers + no guidance on the unconditional prompt and 32 fixed seeds
#: (55 x 32 = 1,760 images), also measured by the classifier's confidence and by whether the predicted digit
#: changes. The digits are white ink on black, so "brighter" means more ink: the label says so.
ATLAS_DEFAULTS: dict[str, Any] = {
    "prompts": [""],
    "seeds": list(range(32)),
    "objectives": ["digit-confidence"],
    "classes": "digit",
    "words": {"brightness": ("brighter (thicker strokes)", "darker (thinner strokes)")},
}

#: The demo transformer's shape (model.TRANSFORMER_CONFIG: num_layers, num_attention_heads) and its prompts
#: (data.ALLOWED_PROMPTS), here without torch so the model can be described before it loads; a test checks
#: that they match the loaded model.
LAYERS, HEADS = 6, 8
PROMPTS: tuple[str, ...] = tuple(str(d) for d in range(10)) + ("",)
#: What `headhunter inspect digits` prints for the token layout, without loading torch (a test compares it
#: with the loaded model: sample_size 16, patch 2, the label encoder's num_tokens 2).
LAYOUT: tuple[str, ...] = (
    "token order: [image | text] (joint sites)",
    "image grid at 16x16 px: 8 x 8 = 64 image tokens (1 px per latent, patch 2)",
    "text tokens: 2 (the label encoder's embedding of the prompt '0'..'9', or '' for unconditional)",
)

_CLASSIFIER: Any = None


def classify_digits(images: Any) -> Any:
    """The shipped classifier's predicted digit (argmax), int64 [B], of images [B, C, H, W] in [0, 1]."""
    import torch

    from .classifier import as_batch, load_classifier

    global _CLASSIFIER
    if _CLASSIFIER is None:
        _CLASSIFIER = load_classifier()
    with torch.no_grad():
        return _CLASSIFIER.logits(as_batch(images)).argmax(dim=1)


class FDDigitsMetric:
    """FD-digits (lower is better) of a sample set vs the held-out digits, with its 95 % interval; offers its
    per-sample classifier features so the evaluation can bootstrap a paired FD difference between settings
    (`features` -> [N, 64], `from_features` -> FD)."""

    def __call__(self, images: Any, prompts: Any) -> tuple[float, tuple[float, float]]:
        from .metrics import fd_digits

        result = fd_digits(images)
        return result.mean, (result.low, result.high)

    def features(self, images: Any, prompts: Any) -> Any:
        from .metrics import classifier_features

        return classifier_features(images)

    def from_features(self, features: Any) -> float:
        from .metrics import fd_features, heldout_features

        if self._heldout is None:
            self._heldout = heldout_features()
        return fd_features(features, self._heldout)

    _heldout: Any = None


fd_digits_metric = FDDigitsMetric()


def search_defaults_for(model: Any) -> dict[str, Any] | None:
    """DEMO_DEFAULTS plus the FD-digits set metric for a ``DigitsPipeline`` of the shipped architecture (any
    weights: the loaded demo, or a fresh ``build_pipeline()``), else None (smaller test models get none)."""
    module = sys.modules.get("headhunter.plugins.digits.model")  # not loaded: `model` cannot be a DigitsPipeline
    if module is None or not isinstance(model, module.DigitsPipeline):
        return None
    config = model.transformer.config
    if any(config.get(key) != value for key, value in module.TRANSFORMER_CONFIG.items()):
        return None
    return {**DEMO_DEFAULTS, "set_metrics": {"FD-digits (lower is better)": fd_digits_metric},
            "atlas": {**ATLAS_DEFAULTS, "classify": classify_digits}}


def _composite_factory(name: str, expression: str) -> Callable[..., Any]:
    """A ``factory() -> Objective`` for an objective written in the grammar (docs/objectives.md)."""

    def factory(**params: Any) -> Any:
        from headhunter.errors import ObjectiveError
        from headhunter.objective.expr import parse_objective

        if params:
            raise ObjectiveError(f"objective {name!r} takes no parameters (it is {expression!r}); got {sorted(params)}")
        return parse_objective(expression)

    factory.__name__ = factory.__qualname__ = name.replace("-", "_")
    factory.__doc__ = f"The objective {expression!r}."
    return factory


def _objective_factory(class_name: str) -> Callable[..., Any]:
    """A ``factory(**params) -> Objective`` that imports the objective class on first use."""

    def factory(**params: Any) -> Any:
        from . import objectives

        return getattr(objectives, class_name)(**params)

    factory.__name__ = factory.__qualname__ = class_name
    factory.__doc__ = f"Create a {class_name} objective (params: weights_dir=None, device=None)."
    return factory


@hookimpl
def register_models(register: Register) -> None:
    register("digits", "headhunter.plugins.digits.model:load_digits_pipeline",
             description="embedded demo: SD3 MMDiT (6 x 8 heads) trained on real 16x16 digits; prompts '0'..'9', ''")


@hookimpl
def register_base_models(register: Register) -> None:
    # The same name as the loadable model: a head set for the demo says base model `digits`, and
    # `HeadSet.from_notation("L1H3", base_model="digits")` builds one without loading anything.
    from headhunter.format.sites import KnownModel
    from headhunter.plugins.sd3.sites import sd3_sites

    register("digits", KnownModel("sd3", tuple(sd3_sites(LAYERS, HEADS)), prompts=PROMPTS, layout=LAYOUT),
             description=f"embedded demo: sd3, {LAYERS} joint blocks x {HEADS} heads; prompts '0'..'9', ''")


@hookimpl
def search_defaults(model: Any) -> dict[str, Any] | None:
    return search_defaults_for(model)


@hookimpl
def register_objectives(register: Register) -> None:
    for name, (class_name, description) in OBJECTIVES.items():
        register(name, _objective_factory(class_name), description=description)
    for name, (expression, description) in COMPOSITES.items():
        register(name, _composite_factory(name, expression), description=description)
