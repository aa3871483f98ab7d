"""The Hub transport: commit a staged folder, fetch a file through the cache, read a remote header, search.

It knows repos, files and headers, never head sets or atlases: `HeadSet.push_to_hub` stages a head set and
commits it through `upload_folder`, `headhunter.format.loading` reads what `download_headset` fetched, and
the atlas layer pushes atlases the same way (`headhunter.atlases.publish`), the way huggingface_hub's
`ModelHubMixin` sits below the models that use it.

- `upload_folder` commits a staged folder as **one commit**, creating the repo if needed (`PushOptions`).
- `download_headset` goes through huggingface_hub's cache (`hf_hub_download`), so a second call and offline
  mode work from the cache. The file name is resolved like diffusers' `load_lora_weights`: an explicit
  `weight_name`; else the repo listing's `headset.safetensors`, or its single `.safetensors` file (names
  with checkpoint/optimizer/scheduler skipped; with several, the one whose header is a head set); else an
  error listing the candidates. Offline (`local_files_only=True` or `HF_HUB_OFFLINE=1`) the listing is the
  cached snapshot of that revision instead. Only `.safetensors` files are read.
- `search_hub` lists head sets by tag (`list_models(filter=[...])`); `remote_metadata` reads a remote
  head set's metadata from its safetensors header alone (HTTP range request), without the tensors.

Every failure is a `HubError` (or a `HeadSetError` for a file that is not a head set) naming the repo,
the file and what to do. docs/hub.md is the user guide.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Union

import headhunter.format.headset_io as io
from headhunter._version import __version__
from headhunter.errors import HeadSetError, HubError
from headhunter.format.model_card import ATLAS_TAG, BASE_TAGS, LIBRARY_NAME
from headhunter.format.schema import HeadSetMetadata
from headhunter.format.text import safe_line

if TYPE_CHECKING:  # pragma: no cover
    from huggingface_hub import CommitInfo

#: A `.safetensors` file whose name contains one of these is never taken as the head set (as in diffusers).
SKIPPED_NAME_PARTS = ("checkpoint", "optimizer", "scheduler")
#: Folder of example images inside a pushed repo.
IMAGES_DIR = "images"
#: At most this many candidate headers are read to find the single head set among several files.
MAX_HEADER_PROBES = 8
#: Environment variable: seconds one Hub operation (a listing, a download, a search, a push) may take in all,
#: retries included, before it fails with a HubError. Default DEFAULT_HUB_TIMEOUT.
HUB_TIMEOUT_ENV = "HEADHUNTER_HUB_TIMEOUT"
DEFAULT_HUB_TIMEOUT = 60.0
#: Per-request limit (connect, read, write) for huggingface_hub requests that set none (listings, search,
#: commits); requests with their own (HF_HUB_ETAG_TIMEOUT, HF_HUB_DOWNLOAD_TIMEOUT) keep it when lower.
REQUEST_TIMEOUT = 10.0

ImageLike = Union[str, Path, Any]  # a path, or anything with `.save(path)` (a PIL image)


# ----- push ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PushOptions:
    """How a push commits, for head sets and atlases alike (huggingface_hub's `create_repo` / `upload_folder`
    arguments): `private` applies only when the repo is created; `revision` is the branch to commit to;
    `create_pr=True` opens a pull request instead. The one place these are listed: `HeadSet.push_to_hub`,
    `push_atlas` and the CLI's push options all pass them through here (an unknown keyword is a TypeError)."""

    private: bool | None = None
    token: str | None = None
    commit_message: str | None = None
    revision: str | None = None
    create_pr: bool = False


def upload_folder(folder: Path, repo_id: str, options: PushOptions, default_message: str) -> CommitInfo:
    """Upload a staged folder as one commit, creating the repo if needed; returns huggingface_hub's
    `CommitInfo` (`.commit_url`, `.oid`, `.pr_url`). Every failure is a HubError naming the repo."""
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    api = HfApi(token=options.token, library_name=LIBRARY_NAME, library_version=__version__)
    with _hub_errors(repo_id, revision=options.revision, action="push to"):
        api.create_repo(repo_id, private=options.private, exist_ok=True, repo_type="model")
        return api.upload_folder(
            repo_id=repo_id, folder_path=folder, revision=options.revision, create_pr=options.create_pr,
            commit_message=options.commit_message or default_message,
        )


def check_repo_id(repo_id: str) -> str:
    """`repo_id` if it is a valid Hub model id ('user/name'), else HubError with huggingface_hub's reason."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise HubError(f"{repo_id!r} is not a valid Hub repo id: {str(err).splitlines()[0]}") from None
    return repo_id


def check_weight_name(name: str) -> str:
    path = PurePosixPath(name)
    if not name.endswith(".safetensors"):
        raise HubError(
            f"weight_name {name!r} is not a .safetensors file; headhunter reads and writes only safetensors "
            f"head sets (never pickle). Use e.g. {io.WEIGHTS_NAME!r}"
        )
    if path.is_absolute() or ".." in path.parts or "\\" in name:
        raise HubError(f"weight_name {name!r} must be a relative path inside the repo, like 'sets/dark.safetensors'")
    return name


def write_images(folder: Path, images: Sequence[ImageLike] | Mapping[str, ImageLike] | None) -> list[tuple[str, str]]:
    """Copy or save example images into `images/`; returns (repo path, caption) pairs."""
    if images is None:
        return []
    pairs = list(images.items()) if isinstance(images, Mapping) else [("", img) for img in images]
    (folder / IMAGES_DIR).mkdir()
    out = []
    for index, (caption, image) in enumerate(pairs):
        if isinstance(image, (str, Path)):
            src = Path(image)
            if not src.is_file():
                raise HubError(f"example image {str(src)!r} does not exist; pass existing image files or PIL images")
            name = f"{IMAGES_DIR}/example_{index}{src.suffix.lower() or '.png'}"
            shutil.copyfile(src, folder / name)
        elif hasattr(image, "save"):
            name = f"{IMAGES_DIR}/example_{index}.png"
            image.save(folder / name)
        else:
            raise HubError(f"example image {image!r} must be a file path or a PIL image")
        out.append((name, str(caption)))
    return out


def download_headset(
    repo_id: str,
    *,
    weight_name: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | None = None,
    local_files_only: bool = False,
) -> tuple[Path, str]:
    """Fetch the head-set file into the cache; returns (local path, file name in the repo)."""
    from huggingface_hub import hf_hub_download

    check_repo_id(repo_id)
    offline = local_files_only or _is_offline()
    if weight_name is not None:
        filename = check_weight_name(weight_name)
    elif offline:
        filename = _cached_weight_name(repo_id, revision, cache_dir)
    else:
        try:
            filename = resolve_weight_name(repo_id, revision=revision, token=token)
        except _HubUnreachable as down:  # like hf_hub_download itself: fall back to the cache when the Hub is down
            filename, local_files_only = _cached_weight_name(repo_id, revision, cache_dir, unreachable=str(down)), True
    with _hub_errors(repo_id, filename=filename, revision=revision, offline=offline):
        path = hf_hub_download(
            repo_id, filename, revision=revision, cache_dir=cache_dir, token=token, local_files_only=local_files_only,
            library_name=LIBRARY_NAME, library_version=__version__,
        )
    return Path(path), filename


def download_file(
    repo_id: str,
    filename: str,
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
) -> Path:
    """Fetch one named file of a Hub repo into the cache (e.g. a guider's `guider_config.json`); HubError
    naming the repo, file and fix for every failure (offline and not cached, no such repo, file or revision)."""
    from huggingface_hub import hf_hub_download

    check_repo_id(repo_id)
    offline = local_files_only or _is_offline()
    shown = f"{subfolder}/{filename}" if subfolder else filename
    with _hub_errors(repo_id, filename=shown, revision=revision, offline=offline):
        path = hf_hub_download(
            repo_id, filename, subfolder=subfolder or None, revision=revision, cache_dir=cache_dir, token=token,
            local_files_only=local_files_only, force_download=force_download, library_name=LIBRARY_NAME,
            library_version=__version__,
        )
    return Path(path)


def resolve_weight_name(repo_id: str, *, revision: str | None = None, token: str | None = None) -> str:
    """The head-set file of a repo from its listing: `headset.safetensors`, else the single candidate."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with _hub_errors(repo_id, revision=revision):
        files = api.list_repo_files(repo_id, revision=revision)
    with _hub_errors(repo_id, revision=revision):  # the header probes share the deadline rules
        return _pick(repo_id, revision, files, lambda name: _remote_is_headset(api, repo_id, name, revision))


def _cached_weight_name(
    repo_id: str, revision: str | None, cache_dir: str | Path | None, unreachable: str | None = None
) -> str:
    """Offline: resolve the file name from the cached snapshot of `revision` (no listing can be asked for).
    `unreachable`: why the Hub could not be asked (the message to give when the snapshot is not cached)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    folder = Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    ref = folder / "refs" / (revision or "main")
    snapshot = folder / "snapshots" / (ref.read_text().strip() if ref.is_file() else revision or "main")
    if not snapshot.is_dir():
        if unreachable:
            raise HubError(unreachable.replace(f" {_where(repo_id, revision)}:",
                                               f" {_where(repo_id, revision)} (and it is not in the local cache):", 1))
        raise HubError(_offline_message(repo_id, revision, None))
    files = [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()]
    return _pick(repo_id, revision, files, lambda name: _local_is_headset(snapshot / name), cached=True)


def _pick(repo_id: str, revision: str | None, files: Sequence[str], is_headset: Any, cached: bool = False) -> str:
    """Diffusers-style weight-name choice among a listing; `is_headset(name)` reads a candidate's header."""
    where = _where(repo_id, revision) + (" (cached snapshot; offline)" if cached else "")
    candidates = [
        f for f in files
        if f.endswith(".safetensors") and not any(part in PurePosixPath(f).name.lower() for part in SKIPPED_NAME_PARTS)
    ]
    if io.WEIGHTS_NAME in candidates:
        return io.WEIGHTS_NAME
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        shown = ", ".join(sorted(files)[:10]) or "no files"
        fix = (
            "download it once online, or pass weight_name= if it is cached under another revision"
            if cached else "check the repo id, or publish one with `headhunter push FILE REPO_ID`"
        )
        raise HubError(f"{where} has no head-set file: no .safetensors candidate among {shown}; {fix}")
    ours = [c for c in candidates[:MAX_HEADER_PROBES] if is_headset(c)] if len(candidates) <= MAX_HEADER_PROBES else candidates
    if len(ours) == 1:
        return ours[0]
    raise HubError(
        f"{where} holds {len(ours or candidates)} candidate head-set files: {', '.join(ours or candidates)}; "
        "pass weight_name= one of them (CLI: --weight-name)"
    )


def _remote_is_headset(api: Any, repo_id: str, filename: str, revision: str | None) -> bool:
    try:
        meta = api.parse_safetensors_file_metadata(repo_id, filename, revision=revision).metadata
    except _HubTimeout:
        raise
    except Exception:  # noqa: BLE001 - a probe: any file we cannot parse is simply not a candidate
        return False
    return io.METADATA_KEY in (meta or {})


def _local_is_headset(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
            size = int.from_bytes(head, "little") if len(head) == 8 else 0
            io.header_metadata(io.read_header(head + handle.read(min(size, io.MAX_HEADER_BYTES)), str(path)), str(path))
    except (OSError, HeadSetError):
        return False
    return True


# ----- metadata without the tensors, search -------------------------------------------------------------
def remote_metadata(
    repo_id: str, *, weight_name: str | None = None, revision: str | None = None, token: str | None = None
) -> HeadSetMetadata:
    """A remote head set's metadata, read from the safetensors header alone (one HTTP range request)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HFValidationError, SafetensorsParsingError

    check_repo_id(repo_id)
    filename = check_weight_name(weight_name) if weight_name else resolve_weight_name(repo_id, revision=revision, token=token)
    source = f"{repo_id}/{filename}"
    with _hub_errors(repo_id, filename=filename, revision=revision):
        try:
            header = HfApi(token=token).parse_safetensors_file_metadata(repo_id, filename, revision=revision)
        except SafetensorsParsingError as err:
            raise HeadSetError(not_ours(repo_id, filename, revision, str(err))) from None
        except HFValidationError:
            raise
        except (RecursionError, ValueError, TypeError, KeyError, AttributeError) as err:  # a hostile header
            raise HeadSetError(not_ours(repo_id, filename, revision,
                                         f"its safetensors header cannot be parsed: {type(err).__name__}")) from None
    meta = header.metadata or {}
    if not isinstance(meta, dict) or not isinstance(meta.get(io.METADATA_KEY), str):
        raise HeadSetError(not_ours(repo_id, filename, revision,
                                     f"no '{io.METADATA_KEY}' string in its safetensors header metadata"))
    return io.parse_metadata(meta[io.METADATA_KEY], source=source)


@dataclass
class HubHeadSet:
    """One search result: a Hub repo tagged as a head set, optionally with its header metadata."""

    repo_id: str
    base_model: str | None
    tags: list[str] = field(default_factory=list)
    downloads: int | None = None
    likes: int | None = None
    last_modified: datetime | None = None
    metadata: HeadSetMetadata | None = None
    error: str | None = None  # why the metadata could not be read, when details were asked for

    @property
    def is_atlas(self) -> bool:
        """True for a head atlas (tagged `head-atlas`), not a head set."""
        return ATLAS_TAG in self.tags

    @property
    def user_tags(self) -> list[str]:
        """Tags other than headhunter's own, the library and the Hub's computed `base_model:` tags."""
        skip = {*BASE_TAGS, "text-to-image", LIBRARY_NAME, ATLAS_TAG}
        return [t for t in self.tags if t not in skip and not t.startswith(("base_model:", "license:", "region:"))]


def search_hub(
    *,
    model: str | None = None,
    tags: Sequence[str] = (),
    author: str | None = None,
    query: str | None = None,
    limit: int | None = 50,
    details: bool = False,
    token: str | None = None,
) -> list[HubHeadSet]:
    """Head sets on the Hub: repos tagged `headhunter` (+ `tags`, + `base_model:<model>`), most downloaded first.

    With `details=True`, each result's metadata is read from its safetensors header (one range request
    each, no tensors downloaded).
    """
    from huggingface_hub import HfApi

    filters = [LIBRARY_NAME, *tags] + ([f"base_model:{model}"] if model else [])
    api = HfApi(token=token)
    with _hub_errors("(search)", action="search"):
        found = list(api.list_models(filter=filters, author=author, search=query, sort="downloads", limit=limit))
    results = []
    for info in found:
        # what the Hub says is text from outside: made terminal-safe here, where it enters
        tag_list = [safe_line(str(t)) for t in (info.tags or [])]
        base = next((t.split(":", 1)[1] for t in tag_list if t.startswith("base_model:") and t.count(":") == 1), None)
        entry = HubHeadSet(safe_line(str(info.id)), base, tag_list, info.downloads, info.likes, info.last_modified)
        if details and not entry.is_atlas:
            try:
                entry.metadata = remote_metadata(info.id, token=token)
            except (HubError, HeadSetError) as err:
                entry.error = safe_line(str(err))
        results.append(entry)
    return results


# ----- errors -------------------------------------------------------------------------------------------
class _HubUnreachable(HubError):
    """The Hub endpoint could not be reached at all (connection refused, DNS, timeout)."""


@functools.cache
def _connect_failed_type() -> type[BaseException]:
    """The exception the transport raises when a connection to the Hub cannot be made inside a headhunter Hub
    operation: a subclass of huggingface_hub's `OfflineModeIsEnabled`, because huggingface_hub already treats
    that one the way an unreachable host should be treated: `hf_hub_download` falls back to the cache, and
    its retry loop (`http_backoff`: five retries, 1-8 s apart, one "Retrying in 8s" line each) never retries
    it. A host that does not resolve or refuses connections is known at the first try; retrying only makes
    the user wait 24 s for the same answer."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    class HubConnectFailed(OfflineModeIsEnabled):
        """The Hub host could not be connected to: `cause` says why (DNS, refused, timed out)."""

        def __init__(self, cause: str) -> None:
            super().__init__(cause)
            self.cause = cause

    return HubConnectFailed


def _connect_cause(err: BaseException, host: str) -> str:
    """Why a connection failed, in words: the host does not resolve, refused the connection, or timed out."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, socket.gaierror):
            return f"the host name {host!r} does not resolve (DNS: {seen.strerror or seen})"
        if isinstance(seen, ConnectionRefusedError):
            return f"{host} refused the connection (nothing listens there)"
        seen = seen.__cause__ or seen.__context__
    text = str(err)
    if "timed out" in text.lower() or "timeout" in type(err).__name__.lower():
        return f"connecting to {host} timed out"
    lowered = text.lower()
    if "name or service not known" in lowered or "nodename nor servname" in lowered or "getaddrinfo" in lowered:
        return f"the host name {host!r} does not resolve (DNS: {text})"
    if "refused" in lowered:
        return f"{host} refused the connection (nothing listens there)"
    return f"cannot connect to {host} ({text or type(err).__name__})"


class _FailFastTransport:
    """Wraps the HTTP client's transport: inside a headhunter Hub operation, a failed connection (DNS,
    refused, connect timeout) raises `_connect_failed_type()` at once instead of the client's ConnectError,
    which huggingface_hub would retry five times. Outside an operation it changes nothing."""

    def __init__(self, inner: Any, connect_errors: tuple[type[BaseException], ...]) -> None:
        self.inner, self.connect_errors = inner, connect_errors

    def handle_request(self, request: Any) -> Any:
        try:
            return self.inner.handle_request(request)
        except self.connect_errors as err:
            if _DEADLINE.get() is None:
                raise
            host = getattr(getattr(request, "url", None), "host", None) or "the Hub host"
            raise _connect_failed_type()(_connect_cause(err, str(host))) from err

    def __getattr__(self, name: str) -> Any:  # close(), __enter__, ... of the wrapped transport
        return getattr(self.inner, name)

    def __enter__(self) -> Any:
        self.inner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.inner.__exit__(*exc)


def _instrument(session: Any) -> None:
    """Give huggingface_hub's shared client the deadline hook and the fail-fast transport (once per client).
    Only an httpx-style client (huggingface_hub >= 1.0: `event_hooks`, `_transport`, `_mounts`) is changed."""
    if getattr(session, "_headhunter_instrumented", False):
        return
    hooks = getattr(session, "event_hooks", None)
    if hooks is None:
        return
    if _bound_request not in hooks.get("request", []):
        session.event_hooks = {**hooks, "request": [*hooks.get("request", []), _bound_request]}
    library = sys.modules.get(type(session).__module__.split(".")[0])
    errors = tuple(getattr(library, name) for name in ("ConnectError", "ConnectTimeout")
                   if isinstance(getattr(library, name, None), type))
    if errors and hasattr(session, "_transport"):
        session._transport = _FailFastTransport(session._transport, errors)
        mounts = getattr(session, "_mounts", None)
        if isinstance(mounts, dict):
            for pattern, transport in list(mounts.items()):
                if transport is not None:
                    mounts[pattern] = _FailFastTransport(transport, errors)
    with contextlib.suppress(AttributeError):
        session._headhunter_instrumented = True


class _HubTimeout(HubError):
    """Raised inside a request hook when a Hub operation's time is up (never retried by huggingface_hub)."""


def hub_timeout() -> float:
    """Seconds one Hub operation may take in all: HEADHUNTER_HUB_TIMEOUT, else DEFAULT_HUB_TIMEOUT."""
    text = os.environ.get(HUB_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_HUB_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise HubError(f"{HUB_TIMEOUT_ENV}={text!r} must be a number of seconds > 0")
    return value


#: (deadline as time.monotonic(), total seconds) of the Hub operation running in this context, if any.
_DEADLINE: contextvars.ContextVar[tuple[float, float] | None] = contextvars.ContextVar("headhunter_hub_deadline", default=None)


def _bound_request(request: Any) -> None:
    """httpx request hook: inside a headhunter Hub operation, cap every timeout by the time left (and give
    requests that set none REQUEST_TIMEOUT); when no time is left, fail instead of sending."""
    active = _DEADLINE.get()
    if active is None:
        return
    deadline, total = active
    left = deadline - time.monotonic()
    if left <= 0:
        raise _HubTimeout(total)
    limits = dict(request.extensions.get("timeout") or {})
    request.extensions = {**request.extensions, "timeout": {
        key: min(left, REQUEST_TIMEOUT if limits.get(key) is None else limits[key])
        for key in ("connect", "read", "write", "pool")
    }}


@contextlib.contextmanager
def _deadline() -> Iterator[None]:
    """Bound the Hub requests made inside: huggingface_hub's shared httpx client gets `_bound_request` as a
    request hook and `_FailFastTransport` around its transport (both act only inside this context), so a slow
    Hub fails at the deadline and an unreachable one at the first try. An outer deadline is kept."""
    if _DEADLINE.get() is not None:
        yield
        return
    total = hub_timeout()
    with contextlib.suppress(ImportError):
        from huggingface_hub.utils import get_session

        _instrument(get_session())
    token = _DEADLINE.set((time.monotonic() + total, total))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _where(repo_id: str, revision: str | None) -> str:
    return f"Hub repository {repo_id!r}" + (f" at revision {revision!r}" if revision else "")


def not_ours(repo_id: str, filename: str, revision: str | None, detail: str) -> str:
    return (
        f"{filename!r} in {_where(repo_id, revision)} is not a headhunter head set ({detail}); "
        "pick the head-set file with weight_name= (CLI: --weight-name), or check that the repo holds a head set "
        "(`headhunter search`)"
    )


def _offline_message(repo_id: str, revision: str | None, filename: str | None, action: str = "fetch from") -> str:
    """What to do when offline mode stops an operation; the advice fits the operation: a download can be
    made once online and then read from the cache, a search or a push needs the Hub every time."""
    if action == "search":
        return ("searching the Hub needs the network, and offline mode is on (HF_HUB_OFFLINE=1): unset HF_HUB_OFFLINE "
                "to search. Offline, head sets already downloaded still load by repo id, and `headhunter presets` "
                "lists the shipped ones")
    if action == "push to":
        return (f"pushing to {_where(repo_id, revision)} needs the network, and offline mode is on (HF_HUB_OFFLINE=1): "
                "unset HF_HUB_OFFLINE to push")
    what = f"{filename!r} of {_where(repo_id, revision)}" if filename else _where(repo_id, revision)
    return (
        f"{what} is not in the local cache and the Hub cannot be asked (offline: HF_HUB_OFFLINE=1 or "
        f"local_files_only=True). Download it once online (`headhunter pull {repo_id}`), or pass the cache_dir "
        "it was downloaded to"
    )


def _unreachable_message(action: str, where: str, cause: str, missing: str = "") -> str:
    """One line: which Hub could not be reached, for what, why (DNS, refused, timed out), and what to do."""
    from huggingface_hub import constants

    advice = "check the network, or HF_ENDPOINT if you use a mirror"
    if action == "fetch from":
        advice += "; head sets already downloaded load offline from the cache"
    return f"cannot reach the Hub at {constants.ENDPOINT} to {action} {where}{missing}: {cause}; {advice}"


def _connect_failure(err: BaseException) -> BaseException | None:
    """The fail-fast connection error behind `err` (huggingface_hub wraps it when it falls back to the cache)."""
    kind = _connect_failed_type()
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level exceptions of whichever HTTP client this huggingface_hub version uses."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)), ("requests", ("ConnectionError", "Timeout"))):
        with contextlib.suppress(ImportError):
            mod = __import__(module)
            errors += [getattr(mod, n) for n in names if isinstance(getattr(mod, n, None), type)]
    return tuple(errors)


def _is_offline() -> bool:
    from huggingface_hub import constants

    return getattr(constants, "is_offline_mode", lambda: constants.HF_HUB_OFFLINE)()


@contextlib.contextmanager
def _hub_errors(
    repo_id: str, *, filename: str | None = None, revision: str | None = None, offline: bool = False,
    action: str = "fetch from",
) -> Iterator[None]:
    """Translate huggingface_hub's exceptions into HubError messages that name the repo, file and fix."""
    from huggingface_hub import constants
    from huggingface_hub import errors as hf

    where = "the Hub's model list" if action == "search" else _where(repo_id, revision)
    remote_missing = getattr(hf, "RemoteEntryNotFoundError", hf.EntryNotFoundError)  # huggingface_hub < 1.0
    try:
        with _deadline():
            yield
    except _HubTimeout as err:
        raise _HubUnreachable(
            f"the Hub at {constants.ENDPOINT} did not answer within {err.args[0]:g} s (asked to {action} {where}); "
            f"check the network (or HF_ENDPOINT), or allow more time with {HUB_TIMEOUT_ENV}=SECONDS"
        ) from None
    except (hf.LocalEntryNotFoundError, hf.OfflineModeIsEnabled) as err:  # before EntryNotFoundError (< 1.0)
        failed = _connect_failure(err)
        if failed is not None:  # the Hub could not be connected to (and, for a download, the file is not cached)
            missing = f" (and {filename!r} is not in the local cache)" if isinstance(err, hf.LocalEntryNotFoundError) else ""
            raise _HubUnreachable(_unreachable_message(action, where, failed.cause, missing)) from None  # type: ignore[attr-defined]
        if offline or isinstance(err, hf.OfflineModeIsEnabled):
            raise HubError(_offline_message(repo_id, revision, filename, action)) from None
        raise HubError(
            f"cannot reach the Hub at {constants.ENDPOINT} to {action} {where} and {filename!r} is not cached; "
            "check the network (or HF_ENDPOINT)"
        ) from None
    except hf.HFValidationError as err:
        raise HubError(f"{repo_id!r} is not a valid Hub repo id ({str(err).splitlines()[0]}); use 'user/name'") from None
    except hf.GatedRepoError:
        raise HubError(f"{where} is gated: accept its conditions on the Hub and pass token= (or `hf auth login`)") from None
    except hf.RepositoryNotFoundError:
        raise HubError(
            f"{where} not found (or it is private and no valid token was given). Check the id, pass token= "
            "or log in with `hf auth login`; find head sets with `headhunter search`"
        ) from None
    except hf.RevisionNotFoundError:
        raise HubError(f"revision {revision!r} not found in Hub repository {repo_id!r}; use a branch, tag or commit id that exists") from None
    except remote_missing:
        raise HubError(f"{where} has no file {filename!r}; pass weight_name= a file the repo holds, or omit it to pick the head set automatically") from None
    except hf.HfHubHTTPError as err:
        raise HubError(f"the Hub refused to {action} {where}: {str(err).splitlines()[0]}") from None
    except _transport_errors() as err:
        host = constants.ENDPOINT.split("://", 1)[-1].split("/", 1)[0]
        raise _HubUnreachable(_unreachable_message(action, where, _connect_cause(err, host))) from None


__all__ = [
    "HubHeadSet",
    "PushOptions",
    "check_repo_id",
    "check_weight_name",
    "download_file",
    "download_headset",
    "hub_timeout",
    "remote_metadata",
    "resolve_weight_name",
    "search_hub",
    "upload_folder",
    "write_images",
]
