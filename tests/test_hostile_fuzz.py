"""Generated guider configs, model configs, atlas checkpoints and prompt files (issue #29): for each kind at
least 2,000 inputs per run, 0 raw exceptions, 0 hangs, 0 accepted invalid inputs.

Each input is a valid document with generated changes (a field replaced by a value of the right kind in or
out of its bounds, or by arbitrary JSON; keys removed or added), or raw text (truncated, spliced, with NaN
tokens, deep nesting, control bytes). An oracle written here from the documented rules (docs/guidance.md,
docs/cli.md, the checkpoint schema) says whether the input is valid; the reader under test must then accept
it (or refuse it with the project's error) and must refuse every invalid one with the project's error.
Anything else is counted: a raw exception (not a HeadhunterError), a hang (the alarm fires), an accepted
invalid input. The counts per kind are printed (run with -s) and asserted.
"""

from __future__ import annotations

import json
import math
import signal
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from headhunter.errors import HeadhunterError

pytestmark = pytest.mark.slow

#: Inputs per kind and run (at least 2,000 are required; hypothesis may stop a few short of max_examples).
EXAMPLES = 2100
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
                suppress_health_check=list(HealthCheck))
ALARM_SECONDS = 20


class Hang(BaseException):
    pass


@contextmanager
def no_hang(seconds: int = ALARM_SECONDS):
    def fire(signum, frame):
        raise Hang()

    previous = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Tally:
    kind: str
    generated: int = 0
    refused: int = 0
    accepted_valid: int = 0
    refused_valid: int = 0
    raw: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    accepted_invalid: list[str] = field(default_factory=list)

    def run(self, call, valid: bool, shown: str) -> None:
        self.generated += 1
        try:
            with no_hang(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                call()
        except Hang:
            self.hangs.append(shown[:300])
        except HeadhunterError:
            self.refused += 1
            self.refused_valid += valid
        except Exception as exc:  # noqa: BLE001 - counted: this is what the test looks for
            self.raw.append(f"{type(exc).__name__}: {str(exc)[:200]} <- {shown[:300]}")
        else:
            if valid:
                self.accepted_valid += 1
            else:
                self.accepted_invalid.append(shown[:300])

    def check(self) -> None:
        print(f"\n{self.kind}: generated={self.generated} refused={self.refused} accepted-valid={self.accepted_valid} "
              f"(valid but refused by a later check: {self.refused_valid}) raw-exceptions={len(self.raw)} "
              f"hangs={len(self.hangs)} accepted-invalid={len(self.accepted_invalid)}")
        assert self.generated >= 2000
        assert not self.raw, self.raw[:5]
        assert not self.hangs, self.hangs[:5]
        assert not self.accepted_invalid, self.accepted_invalid[:5]
        assert self.accepted_valid >= 100 and self.refused >= 100  # both sides of the line were exercised


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
    st.sampled_from(["", "no", "yes", "true", "1", "preset:digits-uncond-greedy", "softpag", "joint", "x" * 5000]),
)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=10)


def _is_number(x) -> bool:
    return type(x) in (int, float) and math.isfinite(x)


def _in(x, low, high) -> bool:
    return _is_number(x) and low <= x <= high


def _strict_json(text: str, max_depth: int):
    """The oracle's parser: strict JSON (no NaN/Infinity, no repeated key, int literals of <= 40 digits,
    floats that fit), nesting <= max_depth; raises ValueError otherwise."""
    def pairs(items):
        keys = [k for k, _ in items]
        if len(set(keys)) != len(keys):
            raise ValueError("repeated key")
        return dict(items)

    def constant(name):
        raise ValueError(name)

    def integer(text):
        if len(text.lstrip("-")) > 40:
            raise ValueError("long int")
        return int(text)

    def number(text):
        value = float(text)
        if not math.isfinite(value):
            raise ValueError("overflow")
        return value

    value = json.loads(text, object_pairs_hook=pairs, parse_constant=constant, parse_int=integer, parse_float=number)

    def depth(v):
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        return 0

    if depth(value) > max_depth:
        raise ValueError("too deep")
    json.dumps(value).encode("utf-8")  # unpaired surrogates
    return value


def _text_mutations(base: str):
    """Raw-text changes of a valid JSON document."""
    return st.one_of(
        st.integers(0, len(base)).map(lambda n: base[:n]),
        st.tuples(st.integers(0, len(base)), st.sampled_from(["NaN", "Infinity", "-1e999", "1e400", "\x00", "\x1b]0;x\x07",
                                                            "[" * 40, "{", "}", ",", '"', "\\ud800", "9" * 60, " "])
                  ).map(lambda t: base[:t[0]] + t[1] + base[t[0]:]),
        st.just("[" * 100_000 + "]" * 100_000), st.just(""), st.just("null"), st.just("[]"), st.just('"x"'),
        st.text(max_size=60),
    )


# ----- guider configs ----------------------------------------------------------------------------------------
PRESET = "preset:digits-uncond-greedy"


@pytest.fixture(scope="module")
def guider_base(tmp_path_factory):
    from headhunter.engine.guider import HeadHunterGuidance

    folder = tmp_path_factory.mktemp("g")
    HeadHunterGuidance(headsets=PRESET).save_pretrained(folder)
    return json.loads((folder / "guider_config.json").read_text())


def _scalar_or_list(low, high):
    return st.one_of(st.none(), st.floats(low - 1, high + 1, allow_nan=False), st.integers(int(low) - 2, int(high) + 2),
                     st.lists(st.floats(low - 1, high + 1, allow_nan=False), min_size=0, max_size=3), json_values)


GUIDER_FIELDS = {
    "headsets": st.one_of(st.just([PRESET]), st.just([{"source": PRESET}]),
                          st.just([{"source": PRESET, "revision": None, "weight_name": None}] * 2),
                          st.lists(st.one_of(st.just(PRESET), st.just({"source": PRESET, "revision": "abc"}),
                                             st.just({"source": "x" * 2000}), st.just({"src": PRESET}), json_values),
                                   max_size=3),
                          st.just([PRESET, None]), st.just([None]), st.just([None, PRESET, PRESET]),
                          st.just(PRESET), json_values),
    "perturbed_guidance_scale": _scalar_or_list(0, 1000),
    "perturbed_guidance_start": _scalar_or_list(0, 1),
    "perturbed_guidance_stop": _scalar_or_list(0, 1),
    "scope": st.one_of(st.sampled_from([None, "joint", "image", "pag_mask", "JOINT", "all"]), json_values),
    "perturbation": st.one_of(st.sampled_from([None, "softpag", "identity", "blur", "nope"]), json_values),
    "perturbation_params": st.one_of(st.sampled_from([None, {}, [1], {"bogus": 1}, 5]), json_values),
    "guidance_scale": st.one_of(st.none(), st.floats(-1, 1001, allow_nan=False), json_values),
    "guidance_rescale": st.one_of(st.floats(-0.5, 1.5, allow_nan=False), json_values),
    "use_original_formulation": st.one_of(st.booleans(), json_values),
    "batched": st.one_of(st.booleans(), json_values),
    "per_sample": st.one_of(st.booleans(), json_values),
    "start": st.one_of(st.floats(-0.5, 1.5, allow_nan=False), json_values),
    "stop": st.one_of(st.floats(-0.5, 1.5, allow_nan=False), json_values),
    "enabled": st.one_of(st.booleans(), st.sampled_from(["no", "false", 0, 1]), json_values),
    "_class_name": st.one_of(st.just("HeadHunterGuidance"), json_values),
    "_diffusers_version": st.one_of(st.just("0.42.1"), json_values),
}


def _ref_ok(item, per_sample: bool = False) -> bool:
    if item is None:
        return per_sample  # an unguided row, only with per_sample
    if item == PRESET:
        return True
    return (isinstance(item, dict) and set(item) <= {"source", "revision", "weight_name"} and item.get("source") == PRESET
            and item.get("revision") is None and item.get("weight_name") is None)


def valid_guider(c) -> bool:
    """docs/guidance.md's rules for guider_config.json, restated (the preset's window is [0, 1))."""
    from headhunter import get_registry

    allowed = set(GUIDER_FIELDS) | {"_use_default_values"}
    if not isinstance(c, dict) or set(c) - allowed or "headsets" not in c:
        return False
    per_sample = c.get("per_sample", False)
    if type(per_sample) is not bool:
        return False
    hs = c["headsets"]
    if not (isinstance(hs, list) and 1 <= len(hs) <= 64 and all(_ref_ok(x, per_sample) for x in hs)
            and any(x is not None for x in hs)):
        return False
    n = 1 if per_sample else len(hs)  # per_sample: the head sets form one branch
    per = {}
    for key, low, high, default in (("perturbed_guidance_scale", 0, 1000, 2.0), ("perturbed_guidance_start", 0, 1, 0.0),
                                    ("perturbed_guidance_stop", 0, 1, 1.0)):
        v = c.get(key)
        if v is None:
            per[key] = [default] * n
        elif _in(v, low, high):
            per[key] = [v] * n
        elif isinstance(v, list) and len(v) == n and all(_in(x, low, high) for x in v):
            per[key] = v
        else:
            return False
    if any(a > b for a, b in zip(per["perturbed_guidance_start"], per["perturbed_guidance_stop"])):
        return False
    pert = c.get("perturbation")
    if pert is not None and pert not in get_registry().names("perturbation"):
        return False
    params = c.get("perturbation_params")
    if params is not None and params != {}:
        return False  # the fuzzed params are either {} or not the perturbation's parameters
    scope = c.get("scope")
    scopes = get_registry().perturbation(pert or "softpag").scopes
    if scope is not None and scope not in scopes:
        return False
    if scope is None and "joint" not in scopes:
        return False
    g = c.get("guidance_scale")
    if g is not None and not _in(g, 0, 1000):
        return False
    if not _in(c.get("guidance_rescale", 0.0), 0, 1):
        return False
    if any(type(c.get(k, True)) is not bool for k in ("use_original_formulation", "batched", "enabled")):
        return False
    start, stop = c.get("start", 0.0), c.get("stop", 1.0)
    if not (_in(start, 0, 1) and start < 1 and _in(stop, 0, 1) and start <= stop):  # diffusers: start < 1
        return False
    if c.get("_class_name", "HeadHunterGuidance") != "HeadHunterGuidance":
        return False
    version = c.get("_diffusers_version")
    if version is not None and not (isinstance(version, str) and 1 <= len(version) <= 256):
        return False
    defaults = c.get("_use_default_values")
    return defaults is None or (isinstance(defaults, list) and len(defaults) <= 64
                                and all(isinstance(d, str) and 1 <= len(d) <= 256 for d in defaults))


@st.composite
def guider_inputs(draw, base):
    if draw(st.integers(0, 9)) == 0:  # raw text
        text = draw(_text_mutations(json.dumps(base)))
        try:
            parsed = _strict_json(text, 16)
        except (ValueError, RecursionError):
            return text, False
        return text, len(text.encode("utf-8", "surrogatepass")) <= 1024 * 1024 and valid_guider(parsed)
    doc = dict(base)
    for key in draw(st.lists(st.sampled_from(sorted(GUIDER_FIELDS)), max_size=4, unique=True)):
        if draw(st.integers(0, 5)) == 0:
            doc.pop(key, None)
        else:
            doc[key] = draw(GUIDER_FIELDS[key])
    if draw(st.integers(0, 20)) == 0:
        doc[draw(st.text(min_size=1, max_size=6))] = draw(json_values)
    return json.dumps(doc), valid_guider(doc)


def test_generated_guider_configs(guider_base, tmp_path):
    from headhunter.engine.guider import HeadHunterGuidance

    tally = Tally("guider configs")
    folder = tmp_path / "g"
    folder.mkdir()

    @FUZZ
    @given(guider_inputs(guider_base))
    def one(case):
        text, valid = case
        (folder / "guider_config.json").write_text(text, encoding="utf-8", errors="surrogatepass")
        tally.run(lambda: HeadHunterGuidance.from_pretrained(folder), valid, text)

    one()
    tally.check()


# ----- model configs -----------------------------------------------------------------------------------------
TINY = {"_class_name": "SD3Transformer2DModel", "num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 8,
        "joint_attention_dim": 16, "caption_projection_dim": 16, "pooled_projection_dim": 16, "sample_size": 8,
        "patch_size": 2, "in_channels": 4, "out_channels": 4, "pos_embed_max_size": 8}
COUNTS = ("num_layers", "num_attention_heads")
SIZES = ("sample_size", "pos_embed_max_size", "joint_attention_dim", "attention_head_dim", "caption_projection_dim")


def _big_ints():
    return st.one_of(st.integers(-10, 10), st.integers(500, 520), st.integers(4090, 4100), st.integers(65530, 65540),
                     st.integers(2**31 - 2, 2**31 + 2), st.integers(-(10**15), 10**15))


MODEL_FIELDS = {key: st.one_of(_big_ints(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False),
                               st.text(max_size=4), json_values) for key in COUNTS + SIZES}
MODEL_FIELDS["num_single_layers"] = MODEL_FIELDS["num_layers"]
MODEL_FIELDS["axes_dims_rope"] = st.one_of(st.lists(st.integers(0, 64), max_size=300), json_values)
MODEL_FIELDS["_class_name"] = st.one_of(st.sampled_from(["SD3Transformer2DModel", "x" * 2000, "os.system", ""]), json_values)


_LAYER_KEY = r"(^|_)(layers|blocks|depth)$|^num_.*(layers|blocks)"
_DIM_KEY = r"(_size|_dim|_dims|channels|_len|_length)$|^(sample_size|patch_size|in_channels|out_channels)$"


def _ok(key: str, v, in_list: bool = False) -> bool:
    """docs/cli.md's bounds for a model config, restated: layer counts null or an int in [0, 512] (a list
    there: layer indices), head counts null or an int in [1, 4096] (or a list of them), ints within
    [-2**31, 2**31] (sizes and dimensions at most 65,536), lists <= 256 items, strings <= 1024 characters."""
    import re

    low = key.lower()
    layers, heads = not in_list and re.search(_LAYER_KEY, low), "heads" in low
    if isinstance(v, dict):
        return all(_ok(str(k), x) for k, x in v.items())
    if isinstance(v, list):
        return len(v) <= 256 and all(_ok(key, x, True) for x in v)
    if layers:
        return v is None or (type(v) is int and 0 <= v <= 512)
    if heads and (in_list or v is not None):
        return type(v) is int and 1 <= v <= 4096
    if isinstance(v, str):
        return len(v) <= 1024
    dims = re.search(_DIM_KEY, low)
    if type(v) is int:
        return -(2**31) <= v <= (65536 if dims else 2**31)
    if type(v) is float and dims:
        return -(2**31) <= v <= 65536
    return True


def _layers(v, key="") -> int:
    import re

    if isinstance(v, dict):
        return sum(_layers(x, str(k)) for k, x in v.items())
    return v if type(v) is int and re.search(_LAYER_KEY, key.lower()) else 0


def valid_model_config(c: dict) -> bool:
    return _ok("", c) and _layers(c) <= 512


@st.composite
def model_inputs(draw):
    if draw(st.integers(0, 9)) == 0:
        text = draw(_text_mutations(json.dumps(TINY)))
        try:
            parsed = _strict_json(text, 16)
        except (ValueError, RecursionError):
            return text, False
        return text, isinstance(parsed, dict) and "_class_name" in parsed and valid_model_config(parsed)
    doc = dict(TINY)
    for key in draw(st.lists(st.sampled_from(sorted(MODEL_FIELDS)), max_size=3, unique=True)):
        doc[key] = draw(MODEL_FIELDS[key])
    layers = doc.get("num_layers")
    if type(layers) is int and 8 < layers <= 512 and draw(st.integers(0, 3)):
        doc["num_layers"] = layers % 8  # keep most accepted models small: building 500 blocks takes seconds
    return json.dumps(doc), valid_model_config(doc)


def test_generated_model_configs(tmp_path):
    from diffusers.utils import logging as diffusers_logging

    from headhunter.cli.inspect import resolve_model

    diffusers_logging.set_verbosity_error()  # "config attributes ... will be ignored" for every fuzzed key
    tally = Tally("model configs")
    folder = tmp_path / "m"
    folder.mkdir()

    @FUZZ
    @given(model_inputs())
    def one(case):
        text, valid = case
        (folder / "config.json").write_text(text, encoding="utf-8", errors="surrogatepass")
        tally.run(lambda: resolve_model(str(folder)), valid, text)

    one()
    tally.check()


# ----- atlas checkpoints -------------------------------------------------------------------------------------
ATLAS_BASE = {"settings": {"model": "digits", "steps": 2}, "library_version": "0.1.0",
              "values": {"base": {"0": {"brightness": 0.5, "class": None}}, "L0H1": {"0": {"brightness": 0.25}}},
              "done": [0, 2], "timing": {"images": 4, "seconds": 1.5, "cpu_seconds": 1.0}}
ATLAS_FIELDS = {
    "settings": st.one_of(st.just({"model": "digits"}), json_values),
    "library_version": st.one_of(st.just("0.2.0"), json_values),
    "values": st.one_of(
        st.dictionaries(st.text(max_size=4), st.dictionaries(st.text(max_size=3), st.dictionaries(
            st.text(max_size=4), st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False),
                                           st.integers(-5, 5), st.booleans(), st.text(max_size=2)), max_size=2),
            max_size=2), max_size=2), json_values),
    "done": st.one_of(st.lists(st.integers(-3, 10**6), max_size=5), st.lists(st.integers(0, 5), max_size=4).map(lambda x: x + x),
                      st.just("0,2"), st.lists(st.one_of(st.booleans(), st.floats(allow_nan=False), st.text(max_size=2)),
                                               min_size=1, max_size=3), json_values),
    "timing": st.one_of(st.dictionaries(st.sampled_from(["images", "seconds", "cpu_seconds", "other"]),
                                        st.one_of(st.floats(-1, 100, allow_nan=False), st.integers(-2, 100), st.booleans(),
                                                  st.text(max_size=2)), max_size=3), json_values),
}


def valid_atlas_state(c) -> bool:
    """The atlas checkpoint's schema (search/checkpoint.py, atlases/atlas.py), restated: exactly these keys,
    strict JSON types, values finite numbers or null, done distinct non-negative integers."""
    if not isinstance(c, dict) or set(c) != set(ATLAS_FIELDS):
        return False
    if not isinstance(c["settings"], dict) or not isinstance(c["library_version"], str):
        return False
    values = c["values"]
    if not isinstance(values, dict) or not all(
            isinstance(per, dict) and all(isinstance(m, dict) and all(v is None or _is_number(v) for v in m.values())
                                          for m in per.values()) for per in values.values()):
        return False
    done = c["done"]
    if not (isinstance(done, list) and all(type(d) is int and d >= 0 for d in done) and len(set(done)) == len(done)):
        return False
    timing = c["timing"]
    return isinstance(timing, dict) and all(_is_number(v) for v in timing.values())


@st.composite
def atlas_inputs(draw):
    if draw(st.integers(0, 9)) == 0:
        text = draw(_text_mutations(json.dumps(ATLAS_BASE)))
        try:
            parsed = _strict_json(text, 64)
        except (ValueError, RecursionError):
            return text, False
        return text, valid_atlas_state(parsed)
    doc = json.loads(json.dumps(ATLAS_BASE))
    for key in draw(st.lists(st.sampled_from(sorted(ATLAS_FIELDS)), max_size=3, unique=True)):
        if draw(st.integers(0, 6)) == 0:
            del doc[key]
        else:
            doc[key] = draw(ATLAS_FIELDS[key])
    if draw(st.integers(0, 20)) == 0:
        doc[draw(st.text(min_size=1, max_size=5))] = draw(json_values)
    return json.dumps(doc), valid_atlas_state(doc)


def test_generated_atlas_checkpoints(tmp_path):
    from headhunter.atlases.atlas import AtlasCheckpoint

    tally = Tally("atlas checkpoints")
    path = tmp_path / "state.json"

    @FUZZ
    @given(atlas_inputs())
    def one(case):
        text, valid = case
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        tally.run(lambda: AtlasCheckpoint.read(path), valid, text)

    one()
    tally.check()


# ----- prompt files ------------------------------------------------------------------------------------------
_CONTROLS = "".join(chr(c) for c in [*range(0, 9), *range(11, 32), *range(127, 160)]) + "\u2028\u2029\u202a\u202e\u2066\u2069"
prompt_lines = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30),
    st.text(alphabet="abc \t" + _CONTROLS, max_size=10),
    st.sampled_from(["a cat", "3", "   ", "", "\r", "x" * 4096, "x" * 4097, "é" * 2048, "é" * 2049, "\x00" * 50]),
)


def valid_prompt_file(data: bytes) -> bool:
    """docs/cli.md: UTF-8, <= 4 MiB, 1..10,000 non-empty lines, each <= 4,096 bytes, no NUL or control character
    except tab (C0, DEL, C1, line/paragraph separators, bidi embeddings/overrides/isolates)."""
    if len(data) > 4 * 1024 * 1024:
        return False
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    prompts = [line for line in lines if line.strip()]
    if not 1 <= len(prompts) <= 10_000:
        return False
    for line in prompts:
        if len(line.encode("utf-8")) > 4096:
            return False
        if any(c in _CONTROLS or (c == "\r") for c in line):
            return False
    return True


@st.composite
def prompt_inputs(draw):
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        return draw(st.sampled_from([b"a\n" * 10_001, b"a\n" * 10_000, b"\x00" * (5 * 1024 * 1024), b"x" * 4096 + b"\n",
                                     ("é" * 2048).encode(), ("é" * 2049).encode(), b"\xff", b"ok\xc3", b"\xef\xbb\xbfa"]))
    lines = draw(st.lists(prompt_lines, max_size=8))
    sep = draw(st.sampled_from(["\n", "\r\n"]))
    return sep.join(lines).encode("utf-8", "surrogatepass")


def test_generated_prompt_files(tmp_path):
    from headhunter.format.files import read_prompt_file

    tally = Tally("prompt files")
    path = tmp_path / "prompts.txt"

    @FUZZ
    @given(prompt_inputs())
    def one(data):
        path.write_bytes(data)
        tally.run(lambda: read_prompt_file(path, error=HeadhunterError), valid_prompt_file(data), repr(data[:200]))

    one()
    tally.check()
