"""Built-in plugin: the embedded demo model ``digits`` and its classifier objectives.

``headhunter.load_model("digits")`` returns a ``DigitsPipeline``: a small SD3 MMDiT (6 joint blocks x 8
heads x 16 dims) trained by the project on scikit-learn's real handwritten digits, with the call protocol of
``StableDiffusion3Pipeline``. The objectives score samples with a CNN classifier trained on the training
split. The model card is docs/digits.md. torch and diffusers load on first use, so registering this plugin
costs nothing.
"""

from __future__ import annotations

from typing import Any, Callable

from headhunter.hookspecs import Register, hookimpl

#: name -> (class in .objectives, description)
OBJECTIVES: dict[str, tuple[str, str]] = {
    "digit-logprob": ("DigitLogProb", "log p(prompted digit) under the digits classifier (max log p for ''); "
                                      "does not saturate: the default for searches on the digits model"),
    "digit-confidence": ("DigitConfidence", "p(prompted digit) under the digits classifier (max p for '')"),
    "digit-accuracy": ("DigitAccuracy", "1 if the digits classifier's top class is the prompted digit "
                                        "(for '': if max p > 0.5), else 0"),
}


def load_digits_pipeline(**kwargs: Any) -> Any:
    """The shipped digits ``DigitsPipeline``, offline, in eval mode (see ``model.load_digits_pipeline``)."""
    from .model import load_digits_pipeline as load

    return load(**kwargs)


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
    register("digits", load_digits_pipeline,
             description="embedded demo: SD3 MMDiT (6 x 8 heads) trained on real 16x16 digits; prompts '0'..'9', ''")


@hookimpl
def register_objectives(register: Register) -> None:
    for name, (class_name, description) in OBJECTIVES.items():
        register(name, _objective_factory(class_name), description=description)
