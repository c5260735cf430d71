"""`membench list`: the registered models and methods."""

from __future__ import annotations

import dataclasses

import typer
from rich.table import Table

from . import app
from .format import console


@app.command("list")
def list_(verbose: bool = typer.Option(False, "--verbose", "-v", help="show each method's options")) -> None:
    """List the models and methods membench knows."""
    from .. import backbones, methods

    models = Table(title="models (shipped configs, random weights unless --pretrained)")
    for col in ("name", "family", "task", "layers", "hidden", "positions"):
        models.add_column(col)
    for name in backbones.names():
        bb = backbones.get(name)
        v = bb.config_values
        layers = v.get("num_hidden_layers") or v.get("n_layer") or f"{v.get('encoder_layers')}+{v.get('decoder_layers')}"
        hidden = v.get("hidden_size") or v.get("n_embd") or v.get("d_model")
        pos = v.get("max_position_embeddings") or v.get("n_positions")
        models.add_row(name, bb.family.name, bb.family.task, str(layers), str(hidden), str(pos))
    console.print(models)

    table = Table(title="methods")
    table.add_column("name")
    table.add_column("kind")
    table.add_column("what it does")
    if verbose:
        table.add_column("options (defaults)")
    for name in methods.names(include_modifiers=True):
        m = methods.get(name)
        row = [name, "modifier" if m.is_modifier else "method", m.summary]
        if verbose:
            opts = ", ".join(f"{f.name}={_default(f)}" for f in dataclasses.fields(m.Config)) or "-"
            row.append(opts)
        table.add_row(*row)
    console.print(table)


def _default(f):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory() or "(family default)"
    return "?"
