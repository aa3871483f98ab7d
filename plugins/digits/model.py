"""The embedded demo model: a small SD3 MMDiT on 16x16 digits, wrapped as a diffusers pipeline.

``DigitsPipeline`` behaves like ``StableDiffusion3Pipeline`` (same transformer call, same [uncond | cond]
CFG batching, same ``FlowMatchEulerDiscreteScheduler``), so the guidance engine and the adapters treat it
as SD3 with no special case. The "text encoder" is ``LabelEncoder``: learned embeddings for the prompts
"0".."9" and the null prompt "" (unconditional).

Rectified flow as SD3: ``x_t = (1 - t) x0 + t eps``, the transformer predicts the velocity ``eps - x0`` at
``timestep = 1000 t``; the scheduler's Euler step ``x <- x + (sigma_next - sigma) v`` integrates t: 1 -> 0.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ImagePipelineOutput, SD3Transformer2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.torch_utils import randn_tensor
from safetensors.torch import load_file
from torch import nn

from headhunter.errors import ModelError
from headhunter.format.model_config import read_model_config

from .data import IMAGE_SIZE, NULL_PROMPT, NUM_CLASSES, prompts_to_labels, to_unit

WEIGHTS_DIR = Path(__file__).parent / "weights"
TRANSFORMER_FILE = "transformer.safetensors"
LABEL_ENCODER_FILE = "label_encoder.safetensors"
CONFIG_FILE = "model_config.json"
OUTPUT_TYPES = ("pil", "pt", "np", "latent")

# 6 joint blocks x 8 heads x 16 dims: many small heads (SD3-medium has 24 x 64), so that one head is 1/8 of
# a layer and head selection is finer than layer selection. 64 image tokens + 2 label tokens.
TRANSFORMER_CONFIG: dict[str, Any] = {
    "sample_size": IMAGE_SIZE,
    "patch_size": 2,
    "in_channels": 1,
    "out_channels": 1,
    "num_layers": 6,
    "num_attention_heads": 8,
    "attention_head_dim": 16,
    "joint_attention_dim": 64,
    "caption_projection_dim": 128,
    "pooled_projection_dim": 64,
    "pos_embed_max_size": IMAGE_SIZE // 2,
}
LABEL_ENCODER_CONFIG: dict[str, Any] = {
    "num_classes": NUM_CLASSES,
    "num_tokens": 2,
    "joint_attention_dim": 64,
    "pooled_projection_dim": 64,
}
SCHEDULER_CONFIG: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 1.0}


def build_transformer(**overrides: Any) -> SD3Transformer2DModel:
    """A randomly initialised ``SD3Transformer2DModel`` of the demo config (``overrides`` replace keys).

    ``caption_projection_dim`` always follows ``num_attention_heads * attention_head_dim``: SD3's joint
    blocks need the projected text tokens to have the width of the image tokens.
    """
    config = {**TRANSFORMER_CONFIG, **overrides}
    config["caption_projection_dim"] = config["num_attention_heads"] * config["attention_head_dim"]
    return SD3Transformer2DModel(**config)


class LabelEncoder(ModelMixin, ConfigMixin):
    """Maps class labels (index ``num_classes`` = null label) to SD3's two text conditionings.

    Returns ``encoder_hidden_states`` [B, num_tokens, joint_attention_dim] and ``pooled_projections``
    [B, pooled_projection_dim], standing in for SD3's T5/CLIP sequence and pooled CLIP vector.
    """

    @register_to_config
    def __init__(self, num_classes: int = 10, num_tokens: int = 2, joint_attention_dim: int = 64,
                 pooled_projection_dim: int = 64):
        super().__init__()
        self.tokens = nn.Embedding(num_classes + 1, num_tokens * joint_attention_dim)
        self.pooled = nn.Embedding(num_classes + 1, pooled_projection_dim)
        nn.init.normal_(self.tokens.weight, std=1.0)
        nn.init.normal_(self.pooled.weight, std=1.0)

    @property
    def null_label(self) -> int:
        """The index of the unconditional (empty prompt) label."""
        return self.config.num_classes

    def forward(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed int64 labels [B] -> (encoder_hidden_states, pooled_projections)."""
        cfg = self.config
        tokens = self.tokens(labels).view(labels.shape[0], cfg.num_tokens, cfg.joint_attention_dim)
        return tokens, self.pooled(labels)


class DigitsPipeline(DiffusionPipeline):
    """Class-conditional digit generation with the same call protocol as ``StableDiffusion3Pipeline``."""

    model_cpu_offload_seq = "label_encoder->transformer"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "pooled_prompt_embeds"]

    def __init__(self, transformer: SD3Transformer2DModel, label_encoder: LabelEncoder,
                 scheduler: FlowMatchEulerDiscreteScheduler):
        super().__init__()
        self.register_modules(transformer=transformer, label_encoder=label_encoder, scheduler=scheduler)
        self.default_sample_size = transformer.config.sample_size
        self._guidance_scale = 1.0
        self._joint_attention_kwargs = None
        self._num_timesteps = 0
        self._interrupt = False

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1

    @property
    def joint_attention_kwargs(self) -> dict[str, Any] | None:
        return self._joint_attention_kwargs

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def encode_prompt(self, prompt: str | list[str], device: torch.device | None = None,
                      num_images_per_prompt: int = 1, do_classifier_free_guidance: bool = True,
                      negative_prompt: str | list[str] | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """SD3-style ``(prompt_embeds, negative_prompt_embeds, pooled, negative_pooled)``; negatives are
        None without CFG. The negative prompt defaults to "" (the null label)."""
        device = device or self._execution_device
        labels = prompts_to_labels(prompt).repeat_interleave(num_images_per_prompt).to(device)
        embeds, pooled = self.label_encoder(labels)
        if not do_classifier_free_guidance:
            return embeds, None, pooled, None
        negative = NULL_PROMPT if negative_prompt is None else negative_prompt
        neg_labels = prompts_to_labels(negative).to(device)
        if neg_labels.shape[0] == 1:
            neg_labels = neg_labels.expand(labels.shape[0])
        elif neg_labels.shape[0] * num_images_per_prompt == labels.shape[0]:
            neg_labels = neg_labels.repeat_interleave(num_images_per_prompt)
        else:
            raise ModelError(f"negative_prompt has {neg_labels.shape[0]} entries; allowed: 1 or one per prompt "
                             f"({labels.shape[0] // num_images_per_prompt})")
        neg_embeds, neg_pooled = self.label_encoder(neg_labels)
        return embeds, neg_embeds, pooled, neg_pooled

    def prepare_latents(self, batch_size: int, num_channels: int, height: int, width: int, dtype: torch.dtype,
                        device: torch.device, generator: torch.Generator | list[torch.Generator] | None,
                        latents: torch.Tensor | None = None) -> torch.Tensor:
        """Initial noise [B, C, H, W] (pixel space: no VAE, so no downscaling)."""
        shape = (batch_size, num_channels, height, width)
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise ModelError(f"latents have shape {tuple(latents.shape)}; expected {shape}")
            return latents.to(device=device, dtype=dtype)
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype)

    def _check_size(self, height: int | None, width: int | None) -> int:
        size = self.default_sample_size
        for name, value in (("height", height), ("width", width)):
            if value is not None and value != size:
                raise ModelError(f"{name}={value} is not supported by the digits model; allowed: {size} (or None)")
        return size

    def _postprocess(self, latents: torch.Tensor, output_type: str) -> Any:
        if output_type == "latent":
            return latents
        images = to_unit(latents.float())
        if output_type == "pt":
            return images
        array = images.permute(0, 2, 3, 1).cpu().numpy()
        return array if output_type == "np" else self.numpy_to_pil(array)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] = NULL_PROMPT,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 12,
        sigmas: list[float] | None = None,
        guidance_scale: float = 1.0,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        joint_attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (mirrors SD3's signature)
    ) -> ImagePipelineOutput | tuple:
        """Generate digits. ``prompt``: "0".."9" or "" (unconditional); CFG when ``guidance_scale > 1``.

        ``output_type``: "pil" (list of 16x16 grayscale images), "pt" ([B, 1, 16, 16] float in [0, 1]),
        "np" ([B, 16, 16, 1] in [0, 1]) or "latent" (raw samples in [-1, 1] model space).
        """
        if output_type not in OUTPUT_TYPES:
            raise ModelError(f"Unknown output_type {output_type!r}; allowed: {', '.join(OUTPUT_TYPES)}")
        bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if bad:
            raise ModelError(f"callback_on_step_end_tensor_inputs {bad} not allowed; allowed: "
                             f"{self._callback_tensor_inputs}")
        size = self._check_size(height, width)
        self._guidance_scale = guidance_scale
        self._joint_attention_kwargs = joint_attention_kwargs
        self._interrupt = False
        device = self._execution_device

        prompt_embeds, neg_embeds, pooled_prompt_embeds, neg_pooled = self.encode_prompt(
            prompt, device, num_images_per_prompt, self.do_classifier_free_guidance, negative_prompt)
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([neg_embeds, prompt_embeds], dim=0)
            pooled_prompt_embeds = torch.cat([neg_pooled, pooled_prompt_embeds], dim=0)
        batch = pooled_prompt_embeds.shape[0] // (2 if self.do_classifier_free_guidance else 1)
        latents = self.prepare_latents(batch, self.transformer.config.in_channels, size, size,
                                       prompt_embeds.dtype, device, generator, latents)

        self.scheduler.set_timesteps(num_inference_steps=None if sigmas else num_inference_steps,
                                     sigmas=sigmas, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)

        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                latent_model_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                timestep = t.expand(latent_model_input.shape[0])
                noise_pred = self.transformer(
                    hidden_states=latent_model_input,
                    timestep=timestep,
                    encoder_hidden_states=prompt_embeds,
                    pooled_projections=pooled_prompt_embeds,
                    joint_attention_kwargs=self.joint_attention_kwargs,
                    return_dict=False,
                )[0]
                if self.do_classifier_free_guidance:
                    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                    noise_pred = noise_pred_uncond + self.guidance_scale * (noise_pred_text - noise_pred_uncond)
                latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]

                if callback_on_step_end is not None:
                    scope = {"latents": latents, "prompt_embeds": prompt_embeds,
                             "pooled_prompt_embeds": pooled_prompt_embeds}
                    outputs = callback_on_step_end(self, i, t, {k: scope[k] for k in
                                                                callback_on_step_end_tensor_inputs})
                    latents = outputs.pop("latents", latents)
                    prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                    pooled_prompt_embeds = outputs.pop("pooled_prompt_embeds", pooled_prompt_embeds)
                progress_bar.update()

        image = self._postprocess(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)


def build_pipeline(transformer: SD3Transformer2DModel | None = None,
                   label_encoder: LabelEncoder | None = None) -> DigitsPipeline:
    """A ``DigitsPipeline`` from given (or freshly initialised) modules and the demo scheduler config."""
    return DigitsPipeline(
        transformer=transformer if transformer is not None else build_transformer(),
        label_encoder=label_encoder if label_encoder is not None else LabelEncoder(**LABEL_ENCODER_CONFIG),
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
    )


def save_model(transformer: SD3Transformer2DModel, label_encoder: LabelEncoder, out_dir: str | Path,
               dtype: torch.dtype = torch.float16) -> None:
    """Write configs (one JSON) and safetensors weights (cast to ``dtype``) for ``load_digits_pipeline``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {"transformer": dict(transformer.config), "label_encoder": dict(label_encoder.config),
              "scheduler": SCHEDULER_CONFIG, "weights_dtype": str(dtype).removeprefix("torch.")}
    config = {k: ({kk: vv for kk, vv in v.items() if not kk.startswith("_")} if isinstance(v, dict) else v)
              for k, v in config.items()}
    for module, name in ((transformer, TRANSFORMER_FILE), (label_encoder, LABEL_ENCODER_FILE)):
        state = {k: v.detach().to(dtype).contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(out / name))
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_digits_pipeline(weights_dir: str | Path | None = None, device: str | torch.device = "cpu",
                         dtype: torch.dtype = torch.float32) -> DigitsPipeline:
    """Load the shipped demo model offline (configs + safetensors, never pickle), in eval mode.

    ``weights_dir`` defaults to the weights shipped in the package.
    """
    wdir = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    config_path = wdir / CONFIG_FILE
    if not config_path.is_file():
        raise ModelError(f"No digits model config at {config_path}; train one with "
                                "`python -m headhunter.plugins.digits.train --out DIR`")
    config = read_model_config(config_path)  # bounded read, layer/head counts checked before anything is built
    transformer = SD3Transformer2DModel.from_config(config["transformer"])
    label_encoder = LabelEncoder.from_config(config["label_encoder"])
    for module, name in ((transformer, TRANSFORMER_FILE), (label_encoder, LABEL_ENCODER_FILE)):
        state = {k: v.float() for k, v in load_file(str(wdir / name)).items()}
        module.load_state_dict(state, strict=True, assign=True)  # assign: no second copy of the weights
        module.to(device).eval()
        if dtype != torch.float32:
            module.to(dtype)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config["scheduler"])
    return DigitsPipeline(transformer=transformer, label_encoder=label_encoder, scheduler=scheduler)
