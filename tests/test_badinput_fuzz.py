"""Property-based tests over every reader of files from outside (issue #13).

Generated mutations of valid files (byte-level: flips, truncations, insertions, splices, header-length
edits; JSON-level: any value at any path replaced by arbitrary JSON, huge numbers, deep nesting, odd
strings) must either load, or raise the project's own error. Never another exception, never a hang
(each example runs under an alarm). Whatever loads must also save and load back equal (the writer
accepts what the reader accepts). Bounded to about 30 s in all: `max_examples` per test below.
"""

from __future__ import annotations

import json
import signal
import struct
import warnings
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save as st_save

import headhunter as hh
from headhunter import HeadSet, HeadSetError, SearchError, Site
from headhunter.format.files import parse_json

pytestmark = pytest.mark.slow  # hypothesis fuzzing of every reader: thousands of inputs

SITES = [Site(name=f"blocks.{i}.attn", num_heads=4 + i, kind="joint") for i in range(3)]
VALID = HeadSet.from_heads([(0, 1), (2, 3, 0.5)], sites=SITES, architecture="toy", name="valid",
                           tags=["a"], perturbation={"name": "softpag", "params": {"sigma": 10}})
VALID_BYTES = st_save({k: v for k, v in VALID.dense().items()}, metadata={"headhunter": VALID.metadata.model_dump_json()})
VALID_JSON = VALID.to_json()
FUZZ = settings(max_examples=600, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
#: Per example: a hang becomes a failure after this many seconds.
ALARM_SECONDS = 10


@contextmanager
def no_hang(seconds: int = ALARM_SECONDS):
    def fail(signum, frame):
        raise AssertionError(f"reader did not return within {seconds} s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ----- strategies -------------------------------------------------------------------------------------------
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
    st.sampled_from(["1.0", ".1", "9" * 60, "L0H1", "", "\u0663", "joint", "softpag", "blocks.0.attn"]),
)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
raw_number_tokens = st.sampled_from(["1e400", "-1e400", "NaN", "Infinity", "1" + "0" * 500, "-0", "1e-400",
                                     "0.5e-45", "4.9e-324", '"\\ud800"', "[" * 200 + "]" * 200, "[" * 100_000 + "]" * 100_000,
                                     "1.5", "true"])


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, prefix + (index,))


def _set(doc, path, new):
    if not path:
        return new
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return doc


@st.composite
def json_mutation(draw, doc):
    """A JSON document with one value replaced, deleted or added; returned as text (maybe with a raw token)."""
    doc = json.loads(json.dumps(doc))
    paths = list(_paths(doc))
    path = draw(st.sampled_from(paths))
    action = draw(st.sampled_from(["replace", "delete", "add", "raw"]))
    marker = "__RAW_TOKEN__"
    if action == "replace":
        doc = _set(doc, path, draw(json_values))
    elif action == "delete" and path:
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        del parent[path[-1]]
    elif action == "add":
        parent = doc
        for key in path:
            parent = parent[key]
        if isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(json_values)
        elif isinstance(parent, list):
            parent.append(draw(json_values))
    else:
        doc = _set(doc, path, marker)
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()))
    return text.replace(f'"{marker}"', draw(raw_number_tokens))


@st.composite
def byte_mutation(draw, data: bytes):
    """`data` with a few byte-level edits."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite", "length"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(chunk)] = chunk
        elif kind == "length" and len(data) >= 8:
            data[:8] = struct.pack("<Q", draw(st.one_of(st.integers(0, len(data) + 64), st.integers(0, 2**64 - 1))))
    return bytes(data)


special_numbers = st.one_of(
    st.sampled_from(["1e-300", "5e-46", "1.4e-45", "1e-45", "1.17549435e-38", "0.9999999999", "1.0000000001",
                     "-0.0", "0", "1", "2", "-1", "1e308", "1e400", "1" + "0" * 60, "NaN", "true", "null", '"0.5"']),
    st.floats(min_value=0.0, max_value=1.0).map(repr),
)


@st.composite
def strength_mutation(draw):
    """The JSON rendering with one head's strength (or a new head) set to a tricky number token."""
    doc = json.loads(VALID_JSON)
    site = draw(st.sampled_from([s.name for s in SITES]))
    head = draw(st.sampled_from(["0", "1", "3", "5", "6", "01", "-1", "1e0", "", "99"]))
    doc["heads"].setdefault(site, {})[head] = "__NUM__"
    return json.dumps(doc).replace('"__NUM__"', draw(special_numbers)).encode()


@st.composite
def tensor_mutation(draw):
    """The safetensors file with one float32 of the tensor data replaced by a tricky value."""
    data = bytearray(VALID_BYTES)
    body = 8 + struct.unpack("<Q", VALID_BYTES[:8])[0]
    index = draw(st.integers(0, (len(data) - body) // 4 - 1))
    value = draw(st.one_of(st.floats(width=32), st.sampled_from([1.4e-45, 1e-40, -0.0, 1.0000001, 2.0])))
    data[body + 4 * index : body + 4 * index + 4] = struct.pack("<f", value)
    return bytes(data)


def _with_metadata(meta_text: str) -> bytes:
    return st_save({k: v for k, v in VALID.dense().items()}, metadata={"headhunter": meta_text})


def _with_header(header_text: str) -> bytes:
    raw = header_text.encode("utf-8", "surrogatepass")
    body = VALID_BYTES[8 + struct.unpack("<Q", VALID_BYTES[:8])[0]:]
    return struct.pack("<Q", len(raw)) + raw + body


def _header_doc() -> dict:
    size = struct.unpack("<Q", VALID_BYTES[:8])[0]
    return json.loads(VALID_BYTES[8 : 8 + size])


safetensors_inputs = st.one_of(
    byte_mutation(VALID_BYTES),
    tensor_mutation(),
    json_mutation(json.loads(VALID.metadata.model_dump_json())).map(_with_metadata),
    json_mutation(_header_doc()).map(_with_header),
)
json_inputs = st.one_of(
    byte_mutation(VALID_JSON.encode()),
    strength_mutation(),
    json_mutation(json.loads(VALID_JSON)).map(str.encode),
)


# ----- the properties ------------------------------------------------------------------------------------------
def _loads_or_our_error(path, data: bytes, tmp) -> None:
    path.write_bytes(data)
    try:
        with no_hang(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = hh.load_headset(path)
    except HeadSetError:
        OUTCOMES["refused"] += 1
        return
    OUTCOMES["loaded"] += 1
    assert isinstance(loaded, HeadSet)
    # what loads also saves, in both formats, and loads back equal (safetensors stores float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert hh.load_headset(loaded.save(tmp / "again.json")) == loaded
        back = hh.load_headset(loaded.save(tmp / "again.safetensors"))
    assert back.metadata == loaded.metadata
    assert back.strengths() == {site: {h: float(np.float32(v)) for h, v in heads.items()}
                                for site, heads in loaded.strengths().items()}


OUTCOMES = {"loaded": 0, "refused": 0}
COUNTS = {"safetensors": 0, "json": 0, "checkpoint": 0, "parse_json": 0}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=safetensors_inputs)
def test_safetensors_reader_loads_or_raises_headset_error(scratch, data):
    COUNTS["safetensors"] += 1
    _loads_or_our_error(scratch / "fuzz.safetensors", data, scratch)


@FUZZ
@given(data=json_inputs)
def test_json_rendering_reader_loads_or_raises_headset_error(scratch, data):
    COUNTS["json"] += 1
    _loads_or_our_error(scratch / "fuzz.json", data, scratch)


VALID_STATE = {
    "settings": {"model": "tiny", "objective": "x", "prompts": ["3"], "seeds": [0, 1]},
    "library_version": "0.1.0",
    "units": {"baseline": {"0": {"x": 0.5}, "1": {"x": 0.25}}, "L0": {"0": {"x": 0.75}}},
    "done_batches": {"reference": [0]},
}


@settings(max_examples=400, deadline=5000)
@given(data=st.one_of(byte_mutation(json.dumps(VALID_STATE).encode()), json_mutation(VALID_STATE).map(str.encode)))
def test_checkpoint_reader_reads_or_raises_search_error(scratch, data):
    from headhunter.search.search import SearchCheckpoint
    read_checkpoint = SearchCheckpoint.read

    COUNTS["checkpoint"] += 1
    path = scratch / "state.json"
    path.write_bytes(data)
    try:
        with no_hang():
            state = read_checkpoint(path)
    except SearchError:
        return
    assert set(state) == {"settings", "library_version", "units", "done_batches"}
    for per_pair in state["units"].values():
        for scores in per_pair.values():
            assert all(isinstance(v, float) and np.isfinite(v) for v in scores.values())


@settings(max_examples=600, deadline=5000)
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
                      json_mutation(json.loads(VALID_JSON)).map(str.encode)))
def test_parse_json_returns_json_or_raises_our_error(data):
    COUNTS["parse_json"] += 1
    try:
        with no_hang():
            value = parse_json(data, source="fuzz", error=HeadSetError)
    except HeadSetError:
        return
    json.dumps(value, allow_nan=False).encode("utf-8")  # finite, encodable


def test_report_fuzz_counts():
    """Prints how many generated inputs ran (pytest -s shows it); runs after the property tests in file order."""
    print(f"\nfuzz examples run: {COUNTS}; head-set files {OUTCOMES}")
    if any(COUNTS.values()):
        assert all(n > 0 for n in COUNTS.values())


@pytest.mark.parametrize("data", [VALID_BYTES])
def test_the_seed_file_is_valid(tmp_path, data):
    path = tmp_path / "v.safetensors"
    path.write_bytes(data)
    assert hh.load_headset(path) == VALID
    assert HeadSet._from_json_text(VALID_JSON, "v") == VALID
