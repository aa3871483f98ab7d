"""`headhunter pull`: download a head set from the Hub into the local cache and show it."""

from __future__ import annotations

from pathlib import Path

import click

from headhunter.cli import options


@click.command()
@click.argument("repo_id")
@click.option("--weight-name", help="File to fetch (default: headset.safetensors, or the repo's single head-set file).")
@click.option("--revision", help="Branch, tag or commit id; a commit id pins the exact file.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Cache folder (default: the Hugging Face cache).")
@click.option("--offline", is_flag=True, help="Use only the local cache (like HF_HUB_OFFLINE=1).")
@options.output_file("Also save a copy here (.safetensors or .json).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON rendering instead of the summary.")
@click.option("--token", help="Hub token for private or gated repos.")
def pull(repo_id: str, weight_name: str | None, revision: str | None, cache_dir: str | None, offline: bool,
         output: str | None, as_json: bool, token: str | None) -> None:
    """Fetch the head set of the Hub repo REPO_ID into the cache, check it, and print it."""
    from headhunter.format.hub import download_headset
    from headhunter.format.loading import read_downloaded

    path, filename = download_headset(
        repo_id, weight_name=weight_name, revision=revision, cache_dir=cache_dir, token=token, local_files_only=offline
    )
    headset = read_downloaded(path, repo_id, filename, revision)  # the same message as load_headset gives
    click.echo(headset.to_json() if as_json else headset.describe())
    if not as_json:
        click.echo(f"cached:        {path}")
    if output:
        saved = headset.save(Path(output))
        click.echo(f"saved:         {saved}", err=as_json)
