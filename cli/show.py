"""`headhunter show`: print a head set's metadata and heads in paper notation."""

from __future__ import annotations

import click


@click.command()
@click.argument("source")
@click.option("--json", "as_json", is_flag=True, help="Print the editable JSON rendering instead.")
def show(source: str, as_json: bool) -> None:
    """Print a head set: SOURCE is a file, a folder, `preset:NAME` or a Hub repo id."""
    from headhunter import load_headset

    headset = load_headset(source)
    click.echo(headset.to_json() if as_json else headset.describe())
