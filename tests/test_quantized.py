"""Quantized transformers (issue 24, last item): guided output of a quantized model equals the same quantized
model's guided reference (the float64 attention of headhunter.engine.reference on the q, k, v the quantized
projections produce), stock comes back bit-identical after remove(), and the perturbation acts.

What runs on this CPU (torch 2.13, diffusers 0.42.1):
- torchao through diffusers' own loader, `from_pretrained(..., quantization_config=TorchAoConfig(...))`:
  int8 weight-only, int4 weight-only (per channel: the tiny models' widths are below torchao's group sizes)
  and float8 weight-only, on six declared families.
- bitsandbytes: diffusers' `BitsAndBytesConfig` loader refuses without a GPU ("No GPU found. A GPU is needed
  for quantization."), but bitsandbytes' own CPU modules run, so the Linear layers are swapped for
  `bnb.nn.Linear8bitLt` / `bnb.nn.Linear4bit` (nf4) by hand, as a CPU user would (4-bit: the layers whose
  input and output widths bitsandbytes' CPU kernel takes, multiples of 64, on a 64-wide tiny Chroma).
- GGUF through diffusers' single-file loader (`from_single_file(..., quantization_config=GGUFQuantizationConfig)`)
  on a Q8_0 file written here with the `gguf` package.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from tiny_dits import build, inputs

from headhunter.engine.attention import install
from headhunter.plugin_system.registry import get_registry

torchao = pytest.importorskip("torchao")
from test_declared_dits import _batch_of, batch2, identical, maxdiff, run, strengths  # noqa: E402

warnings.filterwarnings("ignore")
pytestmark = pytest.mark.filterwarnings("ignore")

FAMILIES = ["ChromaTransformer2DModel", "ZImageTransformer2DModel", "Flux3Transformer2DModel",
            "QwenImage21Transformer2DModel", "LTX2VideoTransformer3DModel", "HunyuanImageTransformer2DModel"]


def _torchao_configs():
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, IntxWeightOnlyConfig, PerAxis

    return {"int8-weight-only": Int8WeightOnlyConfig(),
            "int4-weight-only": IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerAxis(0)),
            "float8-weight-only": Float8WeightOnlyConfig()}


def every_head_of_the_last_row(inst, batch):
    """u = 1 on every head of the last row (the first rows stay unperturbed)."""
    table = {}
    for site in inst.sites:
        u = torch.zeros(batch, site.num_heads)
        u[-1] = 1.0
        table[site.name] = u
    return table


def check_guided_equals_reference(model, kwargs, batch, stock_of_float=None, table_of=strengths):
    """The checks of tests/test_declared_dits.py on a quantized model: installed without strengths is stock,
    the perturbation acts, fast = float64 reference within 1e-5, remove() gives stock back bit for bit."""
    stock = run(model, kwargs)
    adapter = get_registry().adapter_for(model)
    with install(adapter, model, "softpag") as inst:
        assert identical(run(model, kwargs), stock), "installed without strengths must be stock"
        table = table_of(inst, batch)
        inst.set_strengths(table)
        fast = run(model, kwargs)
    assert identical(run(model, kwargs), stock), "remove() must give the quantized model's stock back"
    with install(adapter, model, "softpag", mode="reference") as ref_inst:
        ref_inst.set_strengths(table)
        ref = run(model, kwargs)
    assert maxdiff(fast, stock) > 1e-6, "the perturbation had no effect"
    assert maxdiff(fast, ref) <= 1e-5
    if stock_of_float is not None:  # the model really is quantized: its stock output moved off the float one
        assert maxdiff(stock, stock_of_float) > 1e-5
    return maxdiff(fast, ref)


def _quantized_params(model) -> set[str]:
    return {type(p).__name__ for p in model.parameters()} - {"Parameter", "Tensor"}


@pytest.mark.parametrize("config", ["int8-weight-only", "int4-weight-only", "float8-weight-only"])
@pytest.mark.parametrize("cls_name", FAMILIES)
def test_torchao_through_diffusers_loader_is_guided_exactly(cls_name, config, tmp_path):
    import diffusers
    from diffusers import TorchAoConfig

    float_model = build(cls_name)
    float_model.save_pretrained(tmp_path / "model")
    model = getattr(diffusers, cls_name).from_pretrained(
        tmp_path / "model", quantization_config=TorchAoConfig(_torchao_configs()[config]), torch_dtype=torch.float32).eval()
    assert _quantized_params(model), "diffusers' loader left every weight unquantized"
    kwargs = batch2(cls_name) or inputs(cls_name)
    check_guided_equals_reference(model, kwargs, _batch_of(kwargs), run(float_model, kwargs))


def wide_chroma(seed: int = 0):
    """A tiny Chroma 64 wide (bitsandbytes' CPU 4-bit kernel packs weights in blocks of 64 input features)
    and its inputs, 2 samples."""
    import diffusers

    torch.manual_seed(seed)
    model = diffusers.ChromaTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=32, num_attention_heads=2,
        joint_attention_dim=64, axes_dims_rope=[8, 8, 16], approximator_num_channels=8, approximator_hidden_dim=64,
        approximator_layers=1).eval()
    g = torch.Generator().manual_seed(1)
    kwargs = {"hidden_states": torch.randn(2, 16, 4, generator=g), "encoder_hidden_states": torch.randn(2, 12, 64, generator=g),
              "img_ids": torch.randn(16, 3, generator=g), "txt_ids": torch.randn(12, 3, generator=g),
              "timestep": torch.full((2,), 1.0)}
    return model, kwargs


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_bitsandbytes_cpu_modules_are_guided_exactly(kind):
    bnb = pytest.importorskip("bitsandbytes")
    float_model, kwargs = wide_chroma()
    model, _ = wide_chroma()
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            # bitsandbytes' CPU 4-bit kernel packs the input width in blocks of 64 (the 4- and 8-wide
            # embedders stay float)
            if type(child) is torch.nn.Linear and (kind == "int8" or child.in_features % 64 == child.out_features % 64 == 0):
                if kind == "int8":
                    new = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=child.bias is not None,
                                              has_fp16_weights=False)
                else:
                    new = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                            quant_type="nf4", compute_dtype=torch.float32)
                new.load_state_dict(child.state_dict())
                setattr(parent, name, new.to("cpu"))  # bitsandbytes quantizes when the module is moved
                swapped += 1
    assert swapped > 10
    # LLM.int8 quantizes each activation row to 8 bits: on the 2-head, 16-wide tiny Chroma of the declared
    # suite a SoftPAG of one head at u < 1 stayed below that step, bit-identical to stock in the fast path and
    # the float64 reference alike (measured: 0 and 2.4e-7), so every head of the perturbed row is perturbed.
    check_guided_equals_reference(model.eval(), kwargs, 2, run(float_model, kwargs),
                                  table_of=every_head_of_the_last_row)


def test_gguf_through_diffusers_single_file_loader_is_guided_exactly(tmp_path):
    gguf = pytest.importorskip("gguf")
    import diffusers
    from diffusers import GGUFQuantizationConfig

    cls_name = "ChromaTransformer2DModel"
    float_model = build(cls_name)
    float_model.save_pretrained(tmp_path / "config")
    writer = gguf.GGUFWriter(str(tmp_path / "model.gguf"), "chroma")
    quantized = 0
    for key, tensor in float_model.state_dict().items():
        data = tensor.float().numpy()
        if data.ndim == 2 and data.shape[1] % 32 == 0:  # Q8_0 blocks of 32 along the input dimension
            writer.add_tensor(key, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                              raw_shape=gguf.quants.quant_shape_to_byte_shape(data.shape, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            quantized += 1
        else:
            writer.add_tensor(key, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert quantized > 10
    model = getattr(diffusers, cls_name).from_single_file(
        str(tmp_path / "model.gguf"), config=str(tmp_path / "config"),
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32), torch_dtype=torch.float32).eval()
    assert "GGUFParameter" in _quantized_params(model)
    kwargs = batch2(cls_name) or inputs(cls_name)
    check_guided_equals_reference(model, kwargs, _batch_of(kwargs), run(float_model, kwargs))
