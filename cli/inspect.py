"""`headhunter inspect MODEL`: a model's attention sites in paper numbering, their heads and kinds, and the
token layout. Reads only configs, offline: a Hub model must already be in the local cache."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click

from headhunter.cli.params import PIXELS
from headhunter.errors import ModelError


@click.command("inspect")
@click.argument("model")
@click.option("--height", type=PIXELS, default=None, help="Image height in pixels for the token counts.")
@click.option("--width", type=PIXELS, default=None, help="Image width in pixels for the token counts.")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit) to read from the cache.")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False), help="Hugging Face cache to read from.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect(model: str, height: int | None, width: int | None, revision: str | None, cache_dir: str | None,
            as_json: bool) -> None:
    """Print MODEL's sites (paper layer L, name, heads, kind) and token layout.

    MODEL is a registered model name (e.g. `digits`), a local diffusers folder (a pipeline or a
    transformer), or a Hub repo id already in the local cache (read offline, configs only).
    """
    from headhunter.plugin_system.registry import get_registry

    registry = get_registry()
    known = registry.known_model(model) if model in registry.names("model") else None
    if known is not None and known.layout is not None and height is None and width is None:
        _print_table(model, known, as_json)  # described by its plugin: nothing to load (no torch, no weights)
        return
    obj, source = resolve_model(model, revision, cache_dir)
    try:
        adapter = registry.adapter_for(obj)
    except ModelError as err:
        raise ModelError(f"model {model!r}: {err}; install an adapter plugin for this architecture") from None
    sites = adapter.sites(obj)
    if not sites:
        raise ModelError(f"model {model!r} has no attention sites (its config describes an empty transformer)")
    transformer = adapter.transformer(obj)
    layout = adapter.layout_summary(obj, height, width)
    if as_json:
        click.echo(json.dumps({
            "model": model, "source": source, "transformer": type(transformer).__name__, "adapter": adapter.name,
            "architecture": adapter.architecture,
            "sites": [{"layer": i, **s.model_dump()} for i, s in enumerate(sites)], "layout": layout,
        }, indent=2))
        return
    click.echo(f"model:        {model} ({source})")
    click.echo(f"transformer:  {type(transformer).__name__}  adapter: {adapter.name}  architecture: {adapter.architecture}")
    _print_sites(sites, layout)


def _print_table(model: str, known: Any, as_json: bool) -> None:
    """A registered model from the table its plugin registered (sites, layout), without loading it."""
    sites, source = list(known.sites), "registered model; described by its plugin, nothing loaded"
    if as_json:
        click.echo(json.dumps({
            "model": model, "source": source, "transformer": None, "adapter": None, "architecture": known.architecture,
            "sites": [{"layer": i, **s.model_dump()} for i, s in enumerate(sites)], "layout": list(known.layout),
        }, indent=2))
        return
    click.echo(f"model:        {model} ({source})")
    click.echo(f"architecture: {known.architecture}")
    _print_sites(sites, known.layout)


def _print_sites(sites: list[Any], layout: Any) -> None:
    click.echo(f"sites:        {len(sites)} ({sum(s.num_heads for s in sites)} heads); heads are LkHh, 0-based")
    width_name = max(len(s.name) for s in sites)
    for i, site in enumerate(sites):
        click.echo(f"  L{i:<4d} {site.name:<{width_name}}  {site.num_heads:3d} heads  {site.kind}")
    click.echo("token layout:")
    for line in layout:
        click.echo(f"  {line}")


def resolve_model(model: str, revision: str | None = None, cache_dir: str | None = None) -> tuple[Any, str]:
    """The object to inspect and where it came from: a registered model (loaded), else a transformer built on
    the meta device from its config (no weights read), wrapped with the pipeline's VAE scale when known."""
    from headhunter.plugin_system.registry import get_registry

    registry = get_registry()
    if model in registry.names("model"):
        from headhunter import load_model

        try:
            return load_model(model), "registered model"
        except (OSError, ValueError) as err:
            raise ModelError(f"registered model {model!r} could not be loaded: {err}") from None
    path = Path(model)
    if path.exists() and not path.is_dir():
        raise ModelError(_not_a_folder(path, registry.names("model")))
    if path.exists():
        return _from_configs(lambda name: _local_json(path, name), f"local folder {path}",
                             f"{path} is not a diffusers model folder: it holds neither model_index.json (a pipeline) "
                             f"nor a config.json with _class_name (a transformer); {_accepts(registry.names('model'))}")
    if model.startswith((".", "/", "~")) or "\\" in model or model.count("/") > 1:  # meant as a path
        raise ModelError(f"model folder {model} does not exist; {_accepts(registry.names('model'))}")
    if looks_like_repo_id(model):
        _check_repo_id(model, registry.names("model"))
        return _from_configs(lambda name: _cached_json(model, name, revision, cache_dir), "local Hugging Face cache",
                             _missing_from_cache(model))
    raise ModelError(_not_found(model, registry.names("model")))


def _from_configs(read: Any, source: str, missing: str) -> tuple[Any, str]:
    index = read("model_index.json")
    if index is not None:
        config = read("transformer/config.json")
        if config is None:
            raise ModelError(f"{missing} (model_index.json is there, transformer/config.json is not)")
        vae = read("vae/config.json")
        channels = vae.get("block_out_channels") if vae else None
        scale = 2 ** (len(channels) - 1) if isinstance(channels, list) and 0 < len(channels) <= 16 else 8
    else:
        config = read("config.json")
        scale = 8
        if config is None or "_class_name" not in config:
            raise ModelError(missing)
    transformer = _build_on_meta(config)
    return SimpleNamespace(transformer=transformer, vae_scale_factor=scale), source


def _build_on_meta(config: dict[str, Any]) -> Any:
    import diffusers
    import torch

    name = config.get("_class_name", "")
    cls = getattr(diffusers, name, None) if isinstance(name, str) and name.isidentifier() else None
    if cls is None or not hasattr(cls, "from_config"):
        raise ModelError(f"transformer class {name!r} is not a diffusers class; headhunter inspects diffusers models")
    try:
        with torch.device("meta"):
            return cls.from_config(config)
    except Exception as err:  # noqa: BLE001 - any value in a config from outside can break the constructor
        raise ModelError(
            f"cannot build {name} from its config: {type(err).__name__}: {' '.join(str(err).split())[:200]}"
        ) from None


def _local_json(root: Path, name: str) -> dict[str, Any] | None:
    file = root / name
    return _read_config(file) if file.exists() else None


def _read_config(file: Path) -> dict[str, Any]:
    """A config JSON from outside: a regular file, bounded size and depth, finite numbers, an object, and its
    layer/head counts and sizes within bounds (headhunter.format.model_config) before anything is built."""
    from headhunter.format.model_config import read_model_config

    return read_model_config(file)


def _cached_json(repo_id: str, name: str, revision: str | None, cache_dir: str | None) -> dict[str, Any] | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        file = hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir, local_files_only=True)
    except (LocalEntryNotFoundError, EntryNotFoundError, FileNotFoundError):
        return None
    return _read_config(Path(file))


def looks_like_repo_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts)


def _check_repo_id(model: str, registered: list[str]) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError:
        raise ModelError(f"model {model!r} is not a valid Hub repo id (letters, digits, '-', '_', '.'; at most 96 "
                         f"characters); {_accepts(registered)}") from None


def _accepts(registered: list[str]) -> str:
    """What `inspect` takes, for its messages."""
    return (f"inspect takes a registered model ({', '.join(registered) or 'none'}), a local diffusers folder (a "
            "pipeline with model_index.json, or a transformer with config.json) or a Hub repo id 'org/name' already "
            "in the local cache")


def _not_found(model: str, registered: list[str]) -> str:
    return f"model {model!r} not found: no such file or folder, and not a Hub repo id 'org/name'; {_accepts(registered)}"


def _not_a_folder(path: Path, registered: list[str]) -> str:
    """The message for an existing path that is not a folder: what inspect takes, and what the file may be."""
    if path.name in ("config.json", "model_index.json"):
        hint = f" (give the folder holding it: {path.parent})"
    elif path.suffix in (".safetensors", ".json"):
        hint = f" (a head-set file? `headhunter show {path}` prints one)"
    else:
        hint = ""
    return f"{path} is a file, not a model{hint}; {_accepts(registered)}"


def _missing_from_cache(model: str) -> str:
    return (
        f"model {model!r} is not in the local Hugging Face cache (inspect reads offline, configs only). Fetch its "
        f"configs first: `hf download {model} model_index.json transformer/config.json "
        "vae/config.json`, or pass a local folder"
    )
