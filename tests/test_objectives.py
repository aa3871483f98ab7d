"""Built-in objectives: image statistics against hand computations; CLIP scorers on tiny offline models.

The CLIP-based scorers run their real loading code (`from_pretrained`, safetensors, the preprocessor JSON)
on tiny random-weight models saved into a temp folder, which is passed where a Hub repo id would go.
"""

from __future__ import annotations

import json
import math
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from headhunter import ObjectiveError, get_registry
from headhunter.objective.expr import parse_objective
from headhunter.plugins import _clip
from headhunter.plugins.objectives import BUILTIN_OBJECTIVES

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = [name for name, (module, _, _) in BUILTIN_OBJECTIVES.items() if module == "_image_stats"]


def solid(rgb, size=(4, 4), batch=1) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(batch, 3, *size).clone()


def make(name: str, **params):
    return get_registry().objective(name, **params)


# ---------------------------------------------------------------- image statistics


def test_solid_colour_by_hand():
    r, g, b = 0.8, 0.4, 0.2
    x = solid((r, g, b))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    expected = {
        "brightness": y,
        "darkness": 1 - y,
        "contrast": 0.0,
        "saturation": (r - b) / r,
        "colorfulness": 0.3 * math.hypot(255 * (r - g), 255 * (0.5 * (r + g) - b)),
        "sharpness": 0.0,
        "redness": r - (g + b) / 2,
        "warmth": r - b,
    }
    for name, value in expected.items():
        assert make(name)(x, ["p"]).item() == pytest.approx(value, abs=1e-5), name
    target = (1.0, 0.0, 0.0)
    assert make("color", target="#ff0000")(x, ["p"]).item() == pytest.approx(
        1 - math.dist((r, g, b), target) / math.sqrt(3), abs=1e-6
    )


def test_half_red_half_blue_colorfulness_by_hand():
    x = torch.zeros(1, 3, 2, 4)
    x[0, 0, :, :2] = 1.0  # red left
    x[0, 2, :, 2:] = 1.0  # blue right
    rg = [255.0, 0.0]
    yb = [127.5, -255.0]
    sd = math.sqrt(np.var(rg) + np.var(yb))
    mu = math.hypot(np.mean(rg), np.mean(yb))
    assert make("colorfulness")(x, ["p"]).item() == pytest.approx(sd + 0.3 * mu, rel=1e-6)
    assert make("saturation")(x, ["p"]).item() == pytest.approx(1.0)
    assert make("warmth")(x, ["p"]).item() == pytest.approx(0.0)


def test_contrast_and_sharpness_by_hand():
    step = torch.zeros(1, 1, 4, 4)
    step[..., 2:] = 1.0  # left half black, right half white
    assert make("brightness")(step, ["p"]).item() == pytest.approx(0.5)
    assert make("contrast")(step, ["p"]).item() == pytest.approx(0.5)  # the maximum RMS contrast
    # valid Laplacian on the 2x2 interior: [[1, -1], [1, -1]] -> variance 1
    assert make("sharpness")(step, ["p"]).item() == pytest.approx(1.0)
    checker = ((torch.arange(4).view(4, 1) + torch.arange(4).view(1, 4)) % 2).float().view(1, 1, 4, 4)
    assert make("sharpness")(checker, ["p"]).item() == pytest.approx(16.0)  # the maximum: +-4 everywhere
    blurred = torch.full((1, 1, 4, 4), 0.3)
    assert make("sharpness")(blurred, ["p"]).item() == pytest.approx(0.0)


def test_gray_images_are_read_as_r_equals_g_equals_b():
    gray = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))  # like the digits model's output
    assert make("brightness")(gray, ["p"]).tolist() == pytest.approx(gray.mean(dim=(1, 2, 3)).tolist())
    for name in ("saturation", "colorfulness", "redness", "warmth"):
        assert make(name)(gray, ["p"]).abs().max().item() < 1e-5, name
    half = torch.full((1, 1, 4, 4), 0.5)
    closeness = make("color", target="#808080")(half, ["p"]).item()
    assert closeness == pytest.approx(1 - abs(0.5 - 128 / 255), abs=1e-6)
    rgb_version = make("contrast")(half.expand(1, 3, 4, 4), ["p"])
    assert make("contrast")(half, ["p"]).item() == pytest.approx(rgb_version.item())


def test_pil_and_tensor_agree_and_alpha_is_ignored():
    arr = (np.random.default_rng(0).random((2, 12, 10, 3)) * 255).astype(np.uint8)
    pil = [Image.fromarray(a) for a in arr]
    tensor = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255
    rgba = torch.cat([tensor, torch.zeros(2, 1, 12, 10)], dim=1)
    gray_pil = [Image.fromarray(a[..., 0], mode="L") for a in arr]
    for name in OFFLINE:
        obj = make(name, target="#00ff00") if name == "color" else make(name)
        torch.testing.assert_close(obj(pil, ["p", "q"]), obj(tensor, ["p", "q"]))
        torch.testing.assert_close(obj(rgba, ["p"]), obj(tensor, ["p"]))
        torch.testing.assert_close(obj(gray_pil, ["p"]), obj(tensor[:, :1], ["p"]))


@pytest.mark.parametrize("name", OFFLINE)
@pytest.mark.parametrize("channels", [1, 3])
def test_offline_objective_contract(name, channels):
    obj = make(name, target="red") if name == "color" else make(name)
    images = torch.rand(5, channels, 16, 16, generator=torch.Generator().manual_seed(1))
    scores = obj(images, ["a prompt"])
    assert scores.shape == (5,) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    assert str(obj) == str(parse_objective(str(obj)))
    assert get_registry().entries("objective")


def test_directions():
    black, white = solid((0, 0, 0)), solid((1, 1, 1))
    assert make("brightness")(white, ["p"]) > make("brightness")(black, ["p"])
    assert make("darkness")(black, ["p"]) > make("darkness")(white, ["p"])
    red, blue = solid((1, 0, 0)), solid((0, 0, 1))
    assert make("redness")(red, ["p"]).item() == pytest.approx(1.0)
    assert make("redness")(solid((0, 1, 1)), ["p"]).item() == pytest.approx(-1.0)
    assert make("warmth")(red, ["p"]) > 0 > make("warmth")(blue, ["p"])
    assert make("color", target="blue")(blue, ["p"]).item() == pytest.approx(1.0)
    assert make("color", target="#0000FF")(solid((1, 1, 0)), ["p"]).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: make("brightness")(torch.rand(1, 5, 4, 4), ["p"]), "5 channels; allowed: 1"),
        (lambda: make("sharpness")(torch.rand(1, 3, 2, 8), ["p"]), "at least 3x3"),
        (lambda: make("color", target="reddish"), "colour 'reddish' not understood; give '#rrggbb'"),
        (lambda: make("color"), "target"),
        (lambda: make("color", target="red", tint=1), "tint"),
        (lambda: make("brightness", gamma=2), "takes no parameters; got gamma"),
        (lambda: make("brightness")(torch.rand(3, 4, 4), ["p"]), r"\[B, C, H, W\]"),
        (lambda: make("brightness")(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), ["p"]), "dtype torch.uint8; give floats"),
        (lambda: make("contrast")(torch.rand(1, 3, 4, 4) * 2 - 1, ["p"]), r"objectives take \[0, 1\]"),
    ],
)
def test_offline_errors(build, message):
    with pytest.raises(ObjectiveError, match=message):
        build()


# ---------------------------------------------------------------- tiny CLIP models, saved like Hub repos


def tiny_tokenizer():
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + string.punctuation:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A random CLIP (32 px, 8-d projection) saved with tokenizer and preprocessor config, like a Hub repo."""
    from transformers import CLIPConfig, CLIPModel

    tokenizer = tiny_tokenizer()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8,
        logit_scale_init_value=math.log(20.0),
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / _clip.PREPROCESSOR_FILE).write_text(json.dumps({
        "crop_size": {"height": 32, "width": 32}, "size": {"shortest_edge": 32}, "resample": 3,
        "do_resize": True, "do_center_crop": True, "do_normalize": True, "do_rescale": True,
        "rescale_factor": 1 / 255, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "image_processor_type": "CLIPImageProcessor",
    }))
    return folder


def reference(folder: Path):
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(folder).eval(), tiny_tokenizer(), _clip.load_preprocess(str(folder))


def hand_logits(folder: Path, images, texts) -> torch.Tensor:
    """logit_scale.exp() * cos(image_i, text_i) through CLIPModel.forward (its own normalisation and scale)."""
    model, tokenizer, preprocess = reference(folder)
    tokens = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                    pixel_values=preprocess(images))
    return out.logits_per_image.diagonal()


def pictures(n=2, size=(40, 56), seed=0):
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    out = []
    for i in range(n):
        rng = np.random.default_rng(seed + i)
        base = np.stack([np.sin(xx / (3 + i)), np.cos(yy / (4 + i)), np.sin((xx + yy) / 6)], -1)
        arr = ((base + 1) * 100 + rng.random(base.shape) * 50).clip(0, 255).astype(np.uint8)
        out.append(arr)
    return out


def test_preprocessing_matches_clip_image_processor(tiny_clip):
    from transformers import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil.from_pretrained(tiny_clip)
    preprocess = _clip.load_preprocess(str(tiny_clip))
    one_step = 2 / 255 / min(preprocess.std)  # PIL rounds each of its two passes to 8 bits
    for size in [(40, 56), (56, 40), (16, 16), (300, 200), (33, 32)]:
        for arr in pictures(1, size) + [(np.random.default_rng(1).random(size + (3,)) * 255).astype(np.uint8)]:
            image = Image.fromarray(arr)
            expected = torch.from_numpy(np.asarray(processor(images=image, return_tensors="np")["pixel_values"]))
            got = preprocess([image])
            assert got.shape == expected.shape == (1, 3, 32, 32)
            assert (got - expected).abs().max().item() <= one_step
            assert (got - expected).abs().mean().item() < 0.01


def test_pickscore_is_scale_times_cosine(tiny_clip):
    arrays = pictures(2)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    prompts = ["a cat on a mat", "golden hour, a dog"]
    objective = make("pickscore", model=str(tiny_clip), processor=str(tiny_clip))
    scores = objective(images, prompts)
    assert scores.dtype == torch.float32 and scores.shape == (2,)
    torch.testing.assert_close(scores, hand_logits(tiny_clip, images, prompts), rtol=1e-5, atol=1e-5)
    # the same by the explicit formula: exp(logit_scale) * <img/|img|, txt/|txt|>
    model, tokenizer, preprocess = reference(tiny_clip)
    with torch.no_grad():
        img = model.visual_projection(model.vision_model(pixel_values=preprocess(images)).pooler_output)
        tok = tokenizer(prompts, padding=True, return_tensors="pt")
        txt = model.text_projection(model.text_model(**tok).pooler_output)
    cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    torch.testing.assert_close(scores, 20.0 * cos, rtol=1e-5, atol=1e-5)
    # PIL images give the same up to 8-bit rounding of the resize
    pil = objective([Image.fromarray(a) for a in arrays], prompts)
    torch.testing.assert_close(pil, scores, rtol=0, atol=0.05)


def test_prompts_are_per_image(tiny_clip):
    images = torch.from_numpy(np.stack(pictures(2))).permute(0, 3, 1, 2).float() / 255
    objective = make("pickscore", model=str(tiny_clip), processor=str(tiny_clip))
    together = objective(images, ["red fox", "blue whale"])
    alone = torch.cat([objective(images[:1], ["red fox"]), objective(images[1:], ["blue whale"])])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    swapped = objective(images, ["blue whale", "red fox"])
    assert not torch.allclose(together, swapped)
    broadcast = objective(images, ["red fox"])
    torch.testing.assert_close(broadcast[0], together[0])
    with pytest.raises(ObjectiveError, match="3 prompts for 2 images"):
        objective(images, ["a", "b", "c"])


def test_clipscore_template_and_style(tiny_clip):
    images = torch.from_numpy(np.stack(pictures(2))).permute(0, 3, 1, 2).float() / 255
    prompts = ["portrait of an old man", "a girl holding a cat"]
    repo = dict(model=str(tiny_clip))
    plain = make("clipscore", **repo)
    torch.testing.assert_close(plain(images, prompts), hand_logits(tiny_clip, images, prompts), rtol=1e-5, atol=1e-5)
    styled = make("clipscore", style="golden hour", **repo)
    texts = [f"A photo depicts golden hour, {p}" for p in prompts]
    assert styled.texts(prompts) == texts
    torch.testing.assert_close(styled(images, prompts), hand_logits(tiny_clip, images, texts), rtol=1e-5, atol=1e-5)
    custom = make("clipscore", template="{content}, in the style of {style}", style="ukiyo-e", **repo)
    assert custom.texts(["a wave"]) == ["a wave, in the style of ukiyo-e"]
    assert str(styled) == f"clipscore:model={tiny_clip}:style=golden hour"
    assert str(parse_objective(str(styled))) == str(styled)
    with pytest.raises(ObjectiveError, match=r"uses \['mood'\]; allowed: \{prompt\}, \{content\}, \{style\}"):
        make("clipscore", template="{mood} {prompt}", **repo)
    with pytest.raises(ObjectiveError, match="give style="):
        make("clipscore", template="{style}: {prompt}", **repo)


def test_hps_is_the_plain_cosine(tiny_clip):
    images = torch.from_numpy(np.stack(pictures(2))).permute(0, 3, 1, 2).float() / 255
    prompts = ["a", "b c"]
    hps = make("hps", model=str(tiny_clip), processor=str(tiny_clip))
    torch.testing.assert_close(hps(images, prompts), hand_logits(tiny_clip, images, prompts) / 20.0, rtol=1e-5, atol=1e-6)


def test_gray_images_and_models_load_once(tiny_clip):
    a = make("pickscore", model=str(tiny_clip), processor=str(tiny_clip))
    b = parse_objective(f"pickscore:model={tiny_clip}:processor={tiny_clip}")
    assert a.clip is b.clip  # one load per process
    gray = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))  # the digits model's images
    torch.testing.assert_close(a(gray, ["7"]), a(gray.expand(3, 3, 16, 16), ["7"]))


def test_dtype_follows_the_images_and_the_loaded_model_is_kept(tiny_clip):
    objective = make("pickscore", model=str(tiny_clip), processor=str(tiny_clip))
    images = torch.from_numpy(np.stack(pictures(2))).permute(0, 3, 1, 2).float() / 255
    ref = objective(images, ["x", "y"])
    double = objective(images.double(), ["x", "y"])
    assert double.dtype == torch.float32
    torch.testing.assert_close(double, ref, rtol=1e-5, atol=1e-5)
    assert next(objective.clip.model.parameters()).dtype == torch.float32
    assert any(dtype == torch.float64 for _, dtype in objective.clip.copies)
    half = objective(images.bfloat16(), ["x", "y"])
    torch.testing.assert_close(half, ref, rtol=0, atol=0.5)
    torch.testing.assert_close(objective(images, ["x", "y"]), ref)  # float32 again: untouched master


def aesthetic_files(tiny_clip: Path, folder: Path, combined: bool) -> tuple[Path, torch.nn.Module, list]:
    """A LAION-style head (768->... here 8->6->4->1) and, if combined, different CLIP vision weights in one file."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionModelWithProjection

    torch.manual_seed(1)
    head = torch.nn.Sequential(
        torch.nn.Linear(8, 6), torch.nn.Dropout(0.2), torch.nn.Linear(6, 4), torch.nn.Dropout(0.1), torch.nn.Linear(4, 1)
    )
    if combined:
        vision = CLIPVisionModelWithProjection(_clip.vision_config(str(tiny_clip))).eval()
        state = {f"clip.{k}": v for k, v in vision.state_dict().items()}
        state.update({f"mlp.layers.{k}": v for k, v in head.state_dict().items()})
        path = folder / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        vision = CLIPVisionModelWithProjection.from_pretrained(tiny_clip, config=_clip.vision_config(str(tiny_clip))).eval()
        path = folder / "aesthetic-model.pth"
        torch.save({f"layers.{k}": v for k, v in head.state_dict().items()}, path)
    return path, vision, [head[0], head[2], head[4]]


@pytest.mark.parametrize("combined", [True, False], ids=["safetensors-with-clip", "pth-head-only"])
def test_aesthetic_is_the_mlp_of_the_normalised_embedding(tiny_clip, tmp_path, combined):
    path, vision, linears = aesthetic_files(tiny_clip, tmp_path, combined)
    objective = make("aesthetic", weights=str(tmp_path), filename=path.name, clip=str(tiny_clip))
    images = torch.from_numpy(np.stack(pictures(3))).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        embeds = vision(pixel_values=_clip.load_preprocess(str(tiny_clip))(images)).image_embeds
        h = embeds / embeds.norm(dim=-1, keepdim=True)
        for linear in linears:
            h = linear(h)
    torch.testing.assert_close(objective(images, ["ignored"]), h.squeeze(-1), rtol=1e-5, atol=1e-5)
    assert objective(images[:, :1], ["x"]).shape == (3,)


def test_aesthetic_rejects_pickles_that_are_not_plain_state_dicts(tiny_clip, tmp_path):
    torch.save({"layers.0.weight": torch.zeros(1, 8), "note": Path("x")}, tmp_path / "bad.pth")
    with pytest.raises(ObjectiveError, match="not a plain state dict"):
        make("aesthetic", weights=str(tmp_path), filename="bad.pth", clip=str(tiny_clip))
    torch.save({"layers.0.weight": torch.zeros(2, 8)}, tmp_path / "two.pth")
    with pytest.raises(ObjectiveError, match="ends in 2 outputs, expected 1"):
        make("aesthetic", weights=str(tmp_path), filename="two.pth", clip=str(tiny_clip))


def test_missing_weights_fail_at_creation_naming_repo_and_command(tiny_clip):
    with pytest.raises(ObjectiveError) as info:
        make("pickscore", model="headhunter-tests/not-cached-anywhere", processor=str(tiny_clip))
    message = str(info.value)
    assert "'headhunter-tests/not-cached-anywhere'" in message
    assert "`hf download headhunter-tests/not-cached-anywhere`" in message
    assert "huggingface-cli download headhunter-tests/not-cached-anywhere" in message
    with pytest.raises(ObjectiveError, match="`hf download headhunter-tests/no-processor --include \"\*.json\" \"\*.txt\"`"):
        make("clipscore", processor="headhunter-tests/no-processor")
    with pytest.raises(ObjectiveError, match="hf download headhunter-tests/no-head"):
        make("aesthetic", weights="headhunter-tests/no-head", clip=str(tiny_clip))
    with pytest.raises(ObjectiveError, match="local folder"):
        make("aesthetic", weights=str(tiny_clip), filename="missing.safetensors", clip=str(tiny_clip))


def test_bad_parameters_list_what_is_allowed():
    with pytest.raises(ObjectiveError, match=r"bad parameters for objective 'pickscore': modle=.*Allowed: model \(default 'yuvalkirstain/PickScore_v1'\)"):
        make("pickscore", modle="x")


def test_every_builtin_is_registered_described_and_documented():
    docs = (ROOT / "docs" / "objectives.md").read_text()
    entries = {e.name: e for e in get_registry().entries("objective")}
    for name in BUILTIN_OBJECTIVES:
        assert name in entries and entries[name].description
        assert f"`{name}`" in docs, f"{name} missing from docs/objectives.md"
