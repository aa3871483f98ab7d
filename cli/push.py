"""`headhunter push`: publish a head set to the Hugging Face Hub in one commit (file, JSON, model card)."""

from __future__ import annotations

import click

from headhunter.cli import options


@click.command()
@click.argument("source")
@click.argument("repo_id")
@click.option("--weight-name", help="File name in the repo (default headset.safetensors; must end in .safetensors).")
@options.visibility
@click.option("-m", "--message", "commit_message", help="Commit message.")
@click.option("--revision", help="Branch to commit to (default main).")
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing to the branch.")
@click.option("--image", "images", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Example image for the model card (repeatable).")
@click.option("--token", help="Hub token (default: HF_TOKEN or the saved login).")
def push(source: str, repo_id: str, weight_name: str | None, private: bool | None, commit_message: str | None,
         revision: str | None, create_pr: bool, images: tuple[str, ...], token: str | None) -> None:
    """Push SOURCE (a head-set file, folder or `preset:NAME`) to the Hub repo REPO_ID (`user/name`).

    Creates the repo if needed and uploads the head-set file, its headset.json, a model card
    (library headhunter, base model, tags, heads, recommended guidance, provenance) and any --image.
    """
    from pathlib import Path

    from headhunter import load_headset

    if Path(repo_id).exists() and not Path(source).exists():
        raise click.UsageError(f"REPO_ID {repo_id!r} is a local path and SOURCE {source!r} is not: the order is "
                               f"`headhunter push SOURCE REPO_ID` (did you swap them?)")
    headset = load_headset(source)
    info = headset.push_to_hub(
        repo_id, private=private, token=token, commit_message=commit_message, revision=revision,
        create_pr=create_pr, weight_name=weight_name, images=list(images) or None,
    )
    click.echo(f"pushed {headset.name!r} ({len(headset)} heads) to {repo_id}")
    click.echo(f"commit: {info.commit_url}")
    if info.pr_url:
        click.echo(f"pull request: {info.pr_url}")
