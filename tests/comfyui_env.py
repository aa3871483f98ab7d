"""Test helper: the real ComfyUI source on sys.path, and tiny random-weight SD3 / SD3.5 / FLUX models in
ComfyUI's own classes (comfy.model_base.SD3 / Flux wrapped in comfy.model_patcher.ModelPatcher), fp32, CPU.

    import comfyui_env
    comfyui_env.setup()                        # idempotent; must run before any `import comfy...`
    patcher = comfyui_env.tiny_flux()          # ModelPatcher around comfy.model_base.Flux, ~2 M random weights
    inputs = comfyui_env.apply_inputs(patcher) # the kwargs of one ComfyUI model call (apply_model)

Environment:
  COMFYUI_PATH   the ComfyUI tree (default: ../shared/vendor/ComfyUI-0.3.64 beside the checkout, if it exists)
  COMFYUI_ARGS   ComfyUI's command-line flags while comfy.cli_args parses them (default "--cpu"); e.g.
                 "--cpu --use-pytorch-cross-attention" makes CPU runs use attention_pytorch (SDPA) as on GPUs.

The torchvision stand-in: torchvision from the registry does not load beside torch 2.13.0+cpu, and
comfy.model_base imports `torchvision.transforms` for unrelated models (cosmos). `setup()` therefore puts a
stand-in package `torchvision` into sys.modules while ComfyUI imports (unless a torchvision is already
imported); its submodules import fine but raise ImportError on any attribute access, i.e. on first real use.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import os
import shlex
import sys
import types

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Where CI finds ComfyUI when COMFYUI_PATH is not set: the vendored tree beside the checkout.
DEFAULT_COMFYUI_PATH = ROOT.parent / "shared" / "vendor" / "ComfyUI-0.3.64"


def comfyui_path() -> str | None:
    """COMFYUI_PATH, else the vendored tree beside the checkout if it exists, else None."""
    path = os.environ.get("COMFYUI_PATH")
    if path:
        return path
    return str(DEFAULT_COMFYUI_PATH) if DEFAULT_COMFYUI_PATH.is_dir() else None


def is_tree(path: str | None) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, "comfy", "model_patcher.py"))

_done = False


class _StandIn(types.ModuleType):
    """A torchvision (sub)module that imports but is unusable: attribute access raises ImportError."""

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        raise ImportError(
            f"{self.__name__}.{name}: torchvision is a test stand-in here (the registry's torchvision does not "
            "load beside this torch); install a matching torchvision to use it"
        )


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves `torchvision` and every `torchvision.*` import as a _StandIn package."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandIn(spec.name)
        module.__path__ = []
        module.__headhunter_standin__ = True
        return module

    def exec_module(self, module):
        parent, _, child = module.__name__.rpartition(".")
        if parent:
            # the import system sets the attribute too; done here so `from torchvision import x` finds it
            # through __dict__ and never reaches __getattr__
            setattr(sys.modules[parent], child, module)


@contextlib.contextmanager
def torchvision_standin():
    """While active, `import torchvision[.x]` gives _StandIn packages (unless a torchvision is already
    imported). On exit the stand-ins leave sys.modules and the finder leaves sys.meta_path again, so
    transformers / diffusers (which probe importlib.util.find_spec("torchvision")) still see no
    torchvision; ComfyUI modules imported meanwhile keep their references to the stand-ins."""
    if "torchvision" in sys.modules:
        yield
        return
    finder = _StandInFinder()
    sys.meta_path.insert(0, finder)
    try:
        # `from torchvision import transforms` goes through hasattr() first, where an ImportError would
        # escape, so the submodules ComfyUI names at import time exist up front.
        for name in ("transforms", "transforms.functional", "models", "io", "ops", "utils"):
            __import__(f"torchvision.{name}")
        yield
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            if getattr(sys.modules[name], "__headhunter_standin__", False):
                del sys.modules[name]


def _prime_torchvision_probes() -> None:
    """transformers caches is_torchvision_available() (lru_cache) and diffusers computes it at import: make
    both look while the real state is visible (no torchvision), not while the stand-in is in sys.modules
    (ComfyUI imports transformers)."""
    if "torchvision" in sys.modules:
        return
    try:
        from transformers.utils import import_utils as tu

        tu.is_torchvision_available()
    except ImportError:
        pass
    try:
        import diffusers.utils.import_utils  # noqa: F401
    except ImportError:
        pass


#: ComfyUI modules imported by setup() while the torchvision stand-in is active.
COMFY_MODULES = ("comfy.model_management", "comfy.ops", "comfy.utils", "comfy.model_patcher", "comfy.model_base",
                 "comfy.supported_models", "comfy.model_sampling", "comfy.samplers", "comfy.sample",
                 "comfy.patcher_extension", "comfy.ldm.modules.attention")


def setup() -> str:
    """Put ComfyUI on sys.path, let comfy.cli_args parse COMFYUI_ARGS (default --cpu) and import the
    ComfyUI modules the tests use (COMFY_MODULES) beside the torchvision stand-in. Returns the ComfyUI
    path. Idempotent."""
    global _done
    path = comfyui_path()
    if _done:
        return path
    if not is_tree(path):
        raise RuntimeError(f"COMFYUI_PATH={path!r} is not a ComfyUI tree (no comfy/model_patcher.py)")
    if path not in sys.path:
        sys.path.append(path)  # appended: ComfyUI's top-level `utils`, `nodes` must not shadow anything
    import torch

    torch.set_num_threads(1)
    _prime_torchvision_probes()
    with torchvision_standin():
        import comfy.options

        comfy.options.enable_args_parsing()
        saved = sys.argv
        sys.argv = [saved[0] if saved else "comfyui_env"] + shlex.split(os.environ.get("COMFYUI_ARGS", "--cpu"))
        try:
            import comfy.cli_args  # noqa: F401  parses sys.argv now
        finally:
            sys.argv = saved
        for name in COMFY_MODULES:
            importlib.import_module(name)
    _done = True
    return path


# ----------------------------------------------------------------------------------------------------------
# tiny models


def _init_weights(module, seed: int) -> None:
    """Deterministic random weights for every parameter and float buffer (comfy.ops layers skip init:
    their tensors start as torch.empty garbage). Linear-like weights ~ N(0, 1/fan_in); 1-D norm scales
    1 + N(0, 0.1^2); biases and other vectors N(0, 0.02^2); other tensors N(0, 0.5^2)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * fan_in ** -0.5)
            elif name.endswith(("scale", "ln_q.weight", "ln_k.weight")) or ".norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
        for name, b in sorted(module.named_buffers(), key=lambda kv: kv[0]):
            if b.is_floating_point() and name.endswith("pos_embed"):
                b.copy_(0.5 * torch.randn(b.shape, generator=gen))


def _patcher(model_base_obj):
    import torch
    import comfy.model_patcher

    dev = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model_base_obj, load_device=dev, offload_device=dev)


#: SD3-like MMDiT: 4 joint blocks x 4 heads of 64 (MMDiT fixes head_dim = 64 and heads = depth).
SD3_CONFIG = dict(
    in_channels=16, out_channels=16, patch_size=2, depth=4, input_size=None,
    adm_in_channels=32,
    context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 48, "out_features": 256}},
    num_patches=16 * 16, pos_embed_max_size=16, pos_embed_scaling_factor=None,
    x_block_self_attn_layers=[],
)

#: SD3.5-medium-like: qk RMSNorm everywhere and an image-only attn2 in the first blocks.
SD35_CONFIG = dict(SD3_CONFIG, qk_norm="rms", x_block_self_attn_layers=[0, 1])

#: FLUX.1-dev-like: 2 double + 2 single blocks, 4 heads of 32, guidance embedding, RoPE axes 8+12+12.
FLUX_CONFIG = dict(
    image_model="flux", in_channels=16, out_channels=16, patch_size=2, vec_in_dim=32, context_in_dim=48,
    hidden_size=128, mlp_ratio=4.0, num_heads=4, depth=2, depth_single_blocks=2, axes_dim=[8, 12, 12],
    theta=10000, qkv_bias=True, guidance_embed=True,
)


def tiny_sd3(qk_norm: bool = False, seed: int = 0, **overrides):
    """ModelPatcher around comfy.model_base.SD3 (MMDiT); `qk_norm=True` gives the SD3.5-like variant."""
    setup()
    import torch
    import comfy.model_base
    import comfy.supported_models

    unet_config = dict(SD35_CONFIG if qk_norm else SD3_CONFIG, **overrides)
    config = comfy.supported_models.SD3(unet_config)
    config.set_inference_dtype(torch.float32, None)
    model = comfy.model_base.SD3(config, device=torch.device("cpu"))
    _init_weights(model.diffusion_model, seed)
    model.eval()
    return _patcher(model)


def tiny_flux(seed: int = 0, **overrides):
    """ModelPatcher around comfy.model_base.Flux (comfy.ldm.flux.model.Flux)."""
    setup()
    import torch
    import comfy.model_base
    import comfy.supported_models

    config = comfy.supported_models.Flux(dict(FLUX_CONFIG, **overrides))
    config.set_inference_dtype(torch.float32, None)
    model = comfy.model_base.Flux(config, device=torch.device("cpu"))
    _init_weights(model.diffusion_model, seed)
    model.eval()
    return _patcher(model)


# ----------------------------------------------------------------------------------------------------------
# inputs


def conditioning(patcher, batch: int = 1, text_len: int = 7, seed: int = 1, guidance: float | None = None):
    """A ComfyUI CONDITIONING list ([[context, {"pooled_output": ...}]]) matching the tiny model's widths."""
    import torch

    dm = patcher.model.diffusion_model
    gen = torch.Generator().manual_seed(seed)
    if hasattr(dm, "joint_blocks"):
        ctx_dim = dm.context_embedder.in_features
        pooled_dim = dm.y_embedder.mlp[0].in_features
    else:
        ctx_dim = dm.params.context_in_dim
        pooled_dim = dm.params.vec_in_dim
    ctx = torch.randn(batch, text_len, ctx_dim, generator=gen)
    extra = {"pooled_output": torch.randn(batch, pooled_dim, generator=gen)}
    if guidance is not None:
        extra["guidance"] = guidance
    return [[ctx, extra]]


def forward_inputs(patcher, batch: int = 1, height: int = 8, width: int = 12, text_len: int = 7, seed: int = 2):
    """kwargs for one raw diffusion-model forward `patcher.model.diffusion_model(**inputs)` on a latent of
    `height` x `width` (latent pixels; 2x2 patches -> (height/2) x (width/2) image tokens)."""
    import torch

    dm = patcher.model.diffusion_model
    gen = torch.Generator().manual_seed(seed)
    cond = conditioning(patcher, batch, text_len, seed=seed + 1)
    x = torch.randn(batch, 16, height, width, generator=gen)
    t = torch.full((batch,), 0.6)
    kw = dict(x=x, context=cond[0][0], y=cond[0][1]["pooled_output"], transformer_options={})
    if hasattr(dm, "joint_blocks"):
        kw["timesteps"] = t * 1000.0  # ModelSamplingDiscreteFlow.timestep(sigma) = sigma * 1000
    else:
        kw["timestep"] = t  # ModelSamplingFlux.timestep(sigma) = sigma; Flux multiplies by 1000 inside
        kw["guidance"] = torch.full((batch,), 3.5)
    return kw


def run_forward(patcher, inputs, transformer_options=None):
    """One raw forward of the diffusion model (velocity prediction) with the given transformer_options."""
    import torch

    kw = dict(inputs)
    kw["transformer_options"] = transformer_options if transformer_options is not None else {}
    with torch.no_grad():
        return patcher.model.diffusion_model(**kw)


def apply_inputs(patcher, batch: int = 1, height: int = 8, width: int = 12, text_len: int = 7, sigma: float = 0.8,
                 seed: int = 2):
    """kwargs for `patcher.model.apply_model(**inputs)` (ComfyUI's model call: sigma in, denoised x0 out;
    runs the APPLY_MODEL wrappers of transformer_options, so per-pass patches see it as in sampling)."""
    import torch

    raw = forward_inputs(patcher, batch, height, width, text_len, seed)
    kw = dict(x=raw["x"], t=torch.full((batch,), float(sigma)), c_crossattn=raw["context"], y=raw["y"])
    if "guidance" in raw:
        kw["guidance"] = raw["guidance"]
    return kw


def run_apply(patcher, inputs, model_options=None):
    """One ComfyUI model call with the transformer_options of `model_options` (as calc_cond_batch passes them)."""
    import torch

    kw = dict(inputs)
    kw["transformer_options"] = dict((model_options or {}).get("transformer_options", {}))
    with torch.no_grad():
        return patcher.model.apply_model(**kw)
