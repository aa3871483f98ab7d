"""The Hub round trip against a local fake Hub (tests/fakehub.py) driven by the real huggingface_hub client.

Only 127.0.0.1 is ever contacted: the fixture points huggingface_hub's endpoint constants at the fake
server and makes any other outgoing connection fail the test.
"""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest
from click.testing import CliRunner
from fakehub import FakeHub
from safetensors.numpy import save as st_save

import headhunter as hh
from headhunter import HeadSet, HeadSetError, HubError, SearchProvenance, Site, get_plugin_manager, hookimpl
from headhunter.cli import make_cli
from headhunter.format.hub import remote_metadata, search_hub
from headhunter.format.loading import load_from_hub

SD3 = "stabilityai/stable-diffusion-3-medium-diffusers"
FLUX = "black-forest-labs/FLUX.1-dev"
TOKEN = "hf_fake_token"


def point_hub_at(monkeypatch, endpoint: str, cache) -> None:
    """Put huggingface_hub online against `endpoint` (a 127.0.0.1 URL); any other host fails the test.

    huggingface_hub reads HF_ENDPOINT into constants at import time, so the constants are patched
    (HfApi() reads `constants.ENDPOINT` when constructed, hf_hub_download formats the URL template).
    """
    from huggingface_hub import constants

    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def loopback(host) -> None:
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"test tried to reach {host!r}; only the fake Hub on 127.0.0.1 is allowed")

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            loopback(address[0])
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        loopback(host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_TOKEN", TOKEN)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fresh fake Hub; huggingface_hub online, pointed at it, with its default cache under tmp_path."""
    with FakeHub() as fake:
        point_hub_at(monkeypatch, fake.endpoint, tmp_path / "hf-cache")
        yield fake


@pytest.fixture
def offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def searched(heads: str = "L1H10, L11H15@0.5", name: str = "dark-shear", model: str = SD3, **meta) -> HeadSet:
    search = SearchProvenance(objective="pickscore", prompts=["a cat", "a dog"], seeds=[0, 1], steps=20, rounds=2,
                              top_k=1, strength=1.0, scale=3.0, round_scores=[[20.1, 20.0], [20.4]], baseline_score=19.7)
    meta = {"origin": "search", "source": "runs/demo", "search": search, "tags": ["dark"], **meta}
    return HeadSet.from_notation(heads, base_model=model, name=name, description="dark and sheared", **meta)


def commits(fake: FakeHub) -> int:
    return sum(1 for method, path in fake.requests if method == "POST" and "/commit/" in path)


# ----- push -> pull --------------------------------------------------------------------------------------
def test_push_then_pull_in_a_fresh_cache_gives_the_identical_headset(hub, tmp_path):
    from huggingface_hub import ModelCard
    from PIL import Image

    hs = searched()
    png = tmp_path / "cat.png"
    Image.new("RGB", (8, 8), "red").save(png)
    info = hs.push_to_hub("me/dark", images={"a cat": png, "a dog": Image.new("RGB", (8, 8), "blue")})
    assert commits(hub) == 1 and info.oid == hub.repos["me/dark"].refs["main"]
    files = hub.repos["me/dark"].files("main")
    assert sorted(files) == ["README.md", "headset.json", "headset.safetensors", "images/example_0.png", "images/example_1.png"]
    assert HeadSet._from_json_text(files["headset.json"].decode(), "json") == hs
    widget = ModelCard(files["README.md"].decode()).data.to_dict()["widget"]
    assert widget == [{"text": "a cat", "output": {"url": "images/example_0.png"}},
                      {"text": "a dog", "output": {"url": "images/example_1.png"}}]
    assert "<Gallery />" in files["README.md"].decode()

    got = load_from_hub("me/dark", cache_dir=tmp_path / "fresh")
    assert got == hs and got.notation() == "L1H10, L11H15@0.5"
    assert hh.load_headset("me/dark", cache_dir=tmp_path / "fresh2") == hs


def test_model_card_carries_the_hub_conventions(hub):
    from huggingface_hub import ModelCard

    searched().push_to_hub("me/dark")
    card = ModelCard(hub.repos["me/dark"].files("main")["README.md"].decode())
    data = card.data.to_dict()
    assert data["library_name"] == "headhunter"
    assert data["base_model"] == SD3 and data["base_model_relation"] == "adapter"
    assert data["tags"] == ["headhunter", "head-set", "perturbation-guidance", "sd3", "text-to-image", "dark"]
    for text in ("`L1H10, L11H15@0.5`", "`softpag`", "guidance scale w | 3", "`pickscore`", "runs/demo",
                 'headhunter.load_headset("me/dark")', "headhunter.apply(pipe, headset, scale=3)", "19.7", "20.4"):
        assert text in card.text, text
    assert set(hub.repos["me/dark"].tags()) >= {"headhunter", f"base_model:{SD3}", f"base_model:adapter:{SD3}"}


def test_card_of_a_model_that_is_not_on_the_hub_has_no_base_model(hub):
    toy = HeadSet.from_heads([(0, 1)], sites=[Site(name="blocks.0.attn", num_heads=8)], architecture="digits",
                             base_model="digits", name="toy")
    toy.push_to_hub("me/toy")
    card = hub.repos["me/toy"].files("main")["README.md"].decode()
    assert "base_model" not in card.split("---")[1]
    assert 'headhunter.load_model("digits")' in card


def test_custom_weight_name_json_beside_it_and_automatic_pick(hub, tmp_path):
    hs = searched()
    hs.push_to_hub("me/sets", weight_name="sets/dark.safetensors", commit_message="first set")
    assert {"sets/dark.safetensors", "sets/dark.json"} <= set(hub.repos["me/sets"].files("main"))
    assert 'weight_name="sets/dark.safetensors"' in hub.repos["me/sets"].files("main")["README.md"].decode()
    assert load_from_hub("me/sets", cache_dir=tmp_path / "c") == hs  # the single .safetensors file


def test_pull_by_revision_pins_the_commit(hub, tmp_path):
    from huggingface_hub import HfApi

    first = searched("L1H10").push_to_hub("me/evolving")
    second = searched("L13H17, L0H23").push_to_hub("me/evolving")
    info = HfApi().model_info("me/evolving")
    assert info.sha == second.oid and "headset.safetensors" in [s.rfilename for s in info.siblings]
    assert load_from_hub("me/evolving", revision=first.oid, cache_dir=tmp_path / "c").notation() == "L1H10"
    assert load_from_hub("me/evolving", cache_dir=tmp_path / "c").notation() == "L0H23, L13H17"


def test_create_pr_leaves_main_alone(hub, tmp_path):
    searched("L1H10").push_to_hub("me/pr")
    info = searched("L0H3").push_to_hub("me/pr", create_pr=True)
    assert info.pr_url and info.pr_revision == "refs/pr/1"
    assert load_from_hub("me/pr", cache_dir=tmp_path / "c").notation() == "L1H10"
    assert load_from_hub("me/pr", revision="refs/pr/1", cache_dir=tmp_path / "c").notation() == "L0H3"


# ----- offline ------------------------------------------------------------------------------------------
def test_offline_from_cache_makes_no_request(hub, monkeypatch):
    hs = searched()
    hs.push_to_hub("me/dark")
    hs.push_to_hub("me/named", weight_name="dark.safetensors")
    assert load_from_hub("me/dark") == hs and load_from_hub("me/named") == hs
    before = len(hub.requests)
    assert load_from_hub("me/dark", local_files_only=True) == hs
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hh.load_headset("me/dark") == hs
    assert load_from_hub("me/named") == hs  # name taken from the cached snapshot
    assert load_from_hub("me/named", weight_name="dark.safetensors") == hs
    assert len(hub.requests) == before


def test_offline_without_cache_says_so(hub, offline):
    with pytest.raises(HubError, match=r"'me/dark'.*not in the local cache.*offline.*headhunter pull"):
        load_from_hub("me/dark")
    with pytest.raises(HubError, match=r"'headset.safetensors' of Hub repository 'me/dark'.*not in the local cache"):
        load_from_hub("me/dark", weight_name="headset.safetensors")
    assert hub.requests == []


def dead_endpoint() -> str:
    """A loopback URL nobody listens on: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_unreachable_hub_falls_back_to_the_cache(hub, monkeypatch, tmp_path):
    import time

    hs = searched()
    hs.push_to_hub("me/dark")
    assert load_from_hub("me/dark") == hs
    point_hub_at(monkeypatch, dead_endpoint(), tmp_path / "hf-cache")
    start = time.monotonic()  # no retries: a refused connection is known at the first try
    assert load_from_hub("me/dark") == hs
    assert load_from_hub("me/dark", weight_name="headset.safetensors") == hs
    with pytest.raises(HubError, match=r"cannot reach the Hub at http://127.0.0.1:\d+ to fetch from Hub repository "
                                       r"'me/other' \(and it is not in the local cache\): 127.0.0.1 refused"):
        load_from_hub("me/other")
    with pytest.raises(HubError, match=r"cannot reach the Hub at http://127.0.0.1:\d+.*'me/other'.*not in the local cache"):
        load_from_hub("me/other", weight_name="headset.safetensors")
    assert time.monotonic() - start < 2


# ----- the Hub down or offline, as the CLI says it (one line, at once, the cause named) -----------------
@pytest.fixture(params=["refused", "dns"])
def hub_down(request, monkeypatch, tmp_path):
    """huggingface_hub pointed at a Hub that cannot be reached: a refused port, or a host name that does not
    resolve (getaddrinfo fails for it, as with no network). Yields the words that name the cause."""
    if request.param == "refused":
        point_hub_at(monkeypatch, dead_endpoint(), tmp_path / "hf-cache")
        yield "refused the connection"
        return
    point_hub_at(monkeypatch, "http://hub-down.invalid", tmp_path / "hf-cache")
    checked = socket.getaddrinfo

    def no_dns(host, *args, **kwargs):
        if host == "hub-down.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return checked(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    yield "'hub-down.invalid' does not resolve"


HUB_VERBS = {
    "pull": ["pull", "me/dark"],
    "pull-named": ["pull", "me/dark", "--weight-name", "headset.safetensors"],
    "show": ["show", "me/dark"],
    "search": ["search", "--details"],
    "push": ["push", "preset:sd3-dark-lighting", "me/dark"],
}


def one_error_line(out) -> str:
    lines = [x for x in out.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), out.output
    return lines[0]


@pytest.mark.parametrize("verb", HUB_VERBS)
def test_cli_with_the_hub_down_says_why_in_one_line_at_once(hub_down, verb, caplog):
    import time

    start = time.monotonic()
    out = CliRunner().invoke(hub_cli(), HUB_VERBS[verb])
    elapsed = time.monotonic() - start
    assert out.exit_code == 1
    line = one_error_line(out)
    assert "cannot reach the Hub at" in line and hub_down in line, line
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]  # huggingface_hub's backoff never ran
    assert elapsed < 2, f"{verb} took {elapsed:.1f} s"
    if verb in ("search", "push"):
        assert "offline" not in line and "cache" not in line  # no advice that cannot apply
    else:
        assert "load offline from the cache" in line


@pytest.mark.parametrize("verb, words", [
    ("pull", "Download it once online (`headhunter pull me/dark`)"),
    ("show", "Download it once online (`headhunter pull me/dark`)"),
    ("search", "searching the Hub needs the network, and offline mode is on (HF_HUB_OFFLINE=1): unset HF_HUB_OFFLINE"),
    ("push", "pushing to Hub repository 'me/dark' needs the network, and offline mode is on (HF_HUB_OFFLINE=1)"),
])
def test_cli_offline_advice_fits_the_verb(hub, offline, verb, words):
    out = CliRunner().invoke(hub_cli(), HUB_VERBS[verb])
    assert out.exit_code == 1
    line = one_error_line(out)
    assert words in line, line
    if verb in ("search", "push"):
        assert "download it once" not in line.lower()
    assert hub.requests == []


# ----- errors -------------------------------------------------------------------------------------------
def test_repo_not_found(hub):
    with pytest.raises(HubError, match=r"Hub repository 'me/missing' not found.*token=.*headhunter search"):
        load_from_hub("me/missing")
    with pytest.raises(HubError, match="'me/missing' not found"):
        load_from_hub("me/missing", weight_name="headset.safetensors")


def test_repo_without_a_headset_file(hub):
    hub.create("me/empty")
    hub.commit("me/empty", {"README.md": b"# nothing", "model.bin": b"x"})
    with pytest.raises(HubError, match=r"'me/empty' has no head-set file.*README.md, model.bin"):
        load_from_hub("me/empty")


def test_a_file_that_is_not_ours(hub):
    hub.create("me/lora")
    lora = st_save({"lora.down": np.zeros((4, 2), dtype=np.float32)}, metadata={"format": "pt"})
    hub.commit("me/lora", {"pytorch_lora_weights.safetensors": lora, "notes.safetensors": b"garbage"})
    with pytest.raises(HeadSetError, match=r"'pytorch_lora_weights.safetensors' in Hub repository 'me/lora' is not a headhunter head set.*no 'headhunter' key"):
        load_from_hub("me/lora", weight_name="pytorch_lora_weights.safetensors")
    with pytest.raises(HeadSetError, match=r"'notes.safetensors' in Hub repository 'me/lora' is not a headhunter head set"):
        load_from_hub("me/lora", weight_name="notes.safetensors")
    with pytest.raises(HeadSetError, match="not a headhunter head set"):
        remote_metadata("me/lora", weight_name="pytorch_lora_weights.safetensors")
    with pytest.raises(HubError, match=r"'me/lora' holds 2 candidate head-set files.*weight_name="):
        load_from_hub("me/lora")


def test_only_safetensors_and_missing_file_and_bad_revision(hub):
    searched().push_to_hub("me/dark")
    with pytest.raises(HubError, match=r"weight_name 'headset.bin' is not a .safetensors file.*never pickle"):
        load_from_hub("me/dark", weight_name="headset.bin")
    with pytest.raises(HubError, match=r"'me/dark' has no file 'other.safetensors'; pass weight_name="):
        load_from_hub("me/dark", weight_name="other.safetensors")
    with pytest.raises(HubError, match=r"revision 'v9' not found in Hub repository 'me/dark'"):
        load_from_hub("me/dark", revision="v9")
    with pytest.raises(HubError, match="not a .safetensors file"):
        searched().push_to_hub("me/dark", weight_name="headset.pt")
    with pytest.raises(HubError, match="example image 'nope.png' does not exist"):
        searched().push_to_hub("me/dark", images=["nope.png"])


def test_several_files_pick_the_one_whose_header_is_a_headset(hub, tmp_path):
    hs = searched()
    hs.push_to_hub("me/mixed", weight_name="dark.safetensors")
    other = st_save({"w": np.zeros(3, dtype=np.float32)})
    hub.commit("me/mixed", {"lora.safetensors": other, "optimizer.safetensors": other})
    assert load_from_hub("me/mixed", cache_dir=tmp_path / "c") == hs
    searched("L0H3", name="red").push_to_hub("me/mixed", weight_name="red.safetensors")
    with pytest.raises(HubError, match=r"holds 2 candidate head-set files: dark.safetensors, red.safetensors"):
        load_from_hub("me/mixed")


# ----- metadata from the header, search -----------------------------------------------------------------
def test_remote_metadata_reads_only_the_header(hub):
    searched().push_to_hub("me/dark")
    meta = remote_metadata("me/dark")
    assert meta == searched().metadata
    assert hub.repos["me/dark"].downloads == 0  # only range requests were made


def test_search_by_model_and_tag(hub):
    searched(name="sd3-set").push_to_hub("me/sd3-set")
    searched("L38H18", name="flux-set", model=FLUX, tags=["golden"]).push_to_hub("you/flux-set")
    hub.create("me/not-a-headset")
    assert [r.repo_id for r in search_hub()] == ["me/sd3-set", "you/flux-set"]
    assert [r.repo_id for r in search_hub(model=FLUX)] == ["you/flux-set"]
    assert [r.repo_id for r in search_hub(tags=["dark"])] == ["me/sd3-set"]
    assert [r.repo_id for r in search_hub(author="me")] == ["me/sd3-set"]
    assert [r.repo_id for r in search_hub(query="FLUX")] == ["you/flux-set"]
    (found,) = search_hub(model=SD3, details=True)
    assert found.base_model == SD3 and found.user_tags == ["sd3", "dark"]
    assert found.metadata is not None and found.metadata.name == "sd3-set"
    assert ("GET", "/api/models") in hub.requests


# ----- CLI ----------------------------------------------------------------------------------------------
class _HubCommands:
    """Only the Hub verbs, registered through the same hook as the built-ins (the full CLI imports diffusers)."""

    @hookimpl
    def register_commands(self, cli):
        from headhunter.cli.pull import pull
        from headhunter.cli.push import push
        from headhunter.cli.search import search
        from headhunter.cli.show import show

        for command in (push, pull, search, show):
            cli.add_command(command)


def hub_cli():
    pm = get_plugin_manager(load_entry_points=False, builtins=False)
    pm.register(_HubCommands())
    return make_cli(pm)


def test_hub_verbs_are_builtin_commands():
    from headhunter.cli.commands import BUILTIN_COMMANDS

    assert {("push", "push"), ("pull", "pull"), ("search", "search")} <= set(BUILTIN_COMMANDS)


def test_cli_push_pull_search(hub, tmp_path):
    cli = hub_cli()
    runner = CliRunner()
    src = searched().save(tmp_path / "dark.safetensors")
    out = runner.invoke(cli, ["push", str(src), "me/dark", "-m", "first"])
    assert out.exit_code == 0, out.output
    assert "pushed 'dark-shear' (2 heads) to me/dark" in out.output and "/commit/" in out.output

    out = runner.invoke(cli, ["pull", "me/dark", "--cache-dir", str(tmp_path / "c"), "-o", str(tmp_path / "copy.json")])
    assert out.exit_code == 0, out.output
    assert "heads (2): L1H10, L11H15@0.5" in out.output and "cached:" in out.output
    assert hh.load_headset(str(tmp_path / "copy.json")) == searched()
    out = runner.invoke(cli, ["pull", "me/dark", "--cache-dir", str(tmp_path / "c"), "--offline", "--json"])
    assert out.exit_code == 0 and '"heads"' in out.output

    out = runner.invoke(cli, ["search", "--model", SD3, "--details"])
    assert out.exit_code == 0, out.output
    assert "me/dark" in out.output and "dark-shear: dark and sheared | softpag w=3 | origin=search" in out.output
    out = runner.invoke(cli, ["search", "--tag", "nothing-has-this"])
    assert "no head sets found for tags=nothing-has-this" in out.output

    out = runner.invoke(cli, ["push", "preset:sd3-dark", "me/preset-copy"])
    assert out.exit_code == 0, out.output


def test_cli_errors_are_clean(hub):
    out = CliRunner().invoke(hub_cli(), ["pull", "me/missing"])
    assert out.exit_code == 1
    assert "Error: Hub repository 'me/missing' not found" in out.output and "Traceback" not in out.output


def test_cli_pull_of_a_file_that_is_not_a_head_set_gives_the_documented_message(hub, tmp_path):
    hub.create("me/lora")
    lora = st_save({"lora.down": np.zeros((4, 2), dtype=np.float32)}, metadata={"format": "pt"})
    hub.commit("me/lora", {"pytorch_lora_weights.safetensors": lora})
    out = CliRunner().invoke(hub_cli(), ["pull", "me/lora", "--cache-dir", str(tmp_path / "c")])
    assert out.exit_code == 1 and "Traceback" not in out.output
    (line,) = [x for x in out.output.splitlines() if x.strip()]
    assert line.startswith("Error: 'pytorch_lora_weights.safetensors' in Hub repository 'me/lora' is not a headhunter "
                           "head set (the file is a safetensors file but not a head set")
    assert "weight_name= (CLI: --weight-name)" in line and str(tmp_path / "c") not in line
    with pytest.raises(HeadSetError) as api_error:
        load_from_hub("me/lora", cache_dir=tmp_path / "c")
    assert line == f"Error: {api_error.value}"  # the CLI and the Python API say the same


@pytest.mark.parametrize("header", [b"[" * 40_000 + b"]" * 40_000, b"[1, 2]", b'{"__metadata__": 5}',
                                    b'{"__metadata__": {"headhunter": "' + b"[" * 100 + b'"}}',
                                    b'{"x": {"dtype": "F32", "shape": "a", "data_offsets": [0]}}'])
def test_remote_header_read_refuses_hostile_headers_with_our_error(hub, header):
    import struct

    hub.create("me/odd")
    hub.commit("me/odd", {"headset.safetensors": struct.pack("<Q", len(header)) + header})
    with pytest.raises(HeadSetError, match=r"('headset.safetensors' in Hub repository 'me/odd' is not a headhunter "
                                           r"head set|me/odd/headset.safetensors: its 'headhunter' metadata is nested)"):
        remote_metadata("me/odd", weight_name="headset.safetensors")


@pytest.fixture
def silent_hub(monkeypatch, tmp_path):
    """A server on 127.0.0.1 that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    point_hub_at(monkeypatch, f"http://127.0.0.1:{server.getsockname()[1]}", tmp_path / "hf-cache")
    monkeypatch.setenv("HEADHUNTER_HUB_TIMEOUT", "1.5")
    yield
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.mark.slow
@pytest.mark.parametrize("call", [
    lambda: load_from_hub("me/dark"),
    lambda: load_from_hub("me/dark", weight_name="headset.safetensors"),
    lambda: remote_metadata("me/dark", weight_name="headset.safetensors"),
    lambda: search_hub(),
], ids=["pull", "pull-named", "metadata", "search"])
def test_a_hub_that_never_answers_fails_clearly_in_bounded_time(silent_hub, call):
    import time

    start = time.monotonic()
    with pytest.raises(HubError, match=r"(did not answer within 1.5 s|cannot reach the Hub)"):
        call()
    assert time.monotonic() - start < 12  # 1.5 s + one huggingface_hub retry pause (1 s), with a wide margin


def test_hub_timeout_setting_is_checked(monkeypatch):
    from headhunter.format.hub import hub_timeout

    monkeypatch.setenv("HEADHUNTER_HUB_TIMEOUT", "inf")
    with pytest.raises(HubError, match="HEADHUNTER_HUB_TIMEOUT='inf' must be a number of seconds > 0"):
        hub_timeout()


# ----- docs ---------------------------------------------------------------------------------------------
def test_docs_example_runs(hub, capsys):
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[1] / "docs" / "hub.md").read_text()
    marker = "<!-- tested: tests/test_hub.py::test_docs_example_runs -->\n```python\n"
    code = guide.split(marker, 1)[1].split("```", 1)[0]
    exec(compile(code, "docs/hub.md", "exec"), {})
    out = capsys.readouterr().out
    assert "/your-name/dark-shear/commit/" in out and "your-name/dark-shear 1 darker lighting plus shearing" in out
