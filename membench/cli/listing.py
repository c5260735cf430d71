"""`membench list`: the registered models and methods (`--gpus`: the GPUs a prediction can target)."""

from __future__ import annotations

import typer

from . import app
from .format import Table, console, warn
from .format import table as fmt_table


@app.command("list")
def list_(verbose: bool = typer.Option(False, "--verbose", "-v",
                                      help="show each method's options, and what trains on --model"),
          model: str = typer.Option(None, "--model", "-m",
                                    help="with --verbose: the model each method is built on (on meta, no "
                                         "memory) [default: bert-base]"),
          gpus: bool = typer.Option(False, "--gpus", help="list the GPUs `--gpu` can name, and nothing else"),
          ) -> None:
    """List the models and methods membench knows."""
    from .. import backbones, methods

    if model is not None:
        backbones.get(model)  # an unknown --model fails before anything is printed
    # flags that change nothing are harmless (the listing is the same), so a warning, not a refusal: the
    # user expected them to do something
    if gpus:
        ignored = [flag for flag, given in (("--verbose", verbose), (f"--model {model}", model is not None)) if given]
        if ignored:
            warn(f"--gpus lists the GPUs and nothing else; {' and '.join(ignored)} ignored")
        console.print(gpu_table())
        return
    if model is not None and not verbose:
        warn(f"--model {model} only applies with --verbose (what each method trains on it); ignored")
    model = model or "bert-base"

    models = fmt_table("models (shipped configs, random weights unless --pretrained)",
                       [(col, "left") for col in ("name", "family", "task", "layers", "hidden", "positions")],
                       keep=("name",), whole=("positions",))  # (image models: patches + 1)
    for name in backbones.names():
        bb = backbones.get(name)
        shown = bb.family.describe(backbones.make_config(bb))
        models.add_row(name, bb.family.name, bb.family.task, shown["layers"], shown["hidden"], shown["positions"])
    console.print(models)

    family = backbones.get(model).family if verbose else None
    on = f" (options: the defaults as they run on {model})" if verbose else ""
    for title, names in (("methods" + on, methods.names()),
                         ("modifiers: add one to any method as METHOD+NAME, e.g. full+ckpt" + on,
                          [n for n in methods.names(include_modifiers=True) if methods.get(n).is_modifier])):
        console.print(_methods_table(title, names, family))
    if verbose:
        console.print(_trainable_table(model))


def _methods_table(title: str, names: list[str], family) -> Table:
    """One row per method: its name, what it does, and (`family` given) its options as they run on it."""
    from .. import methods

    columns = [("name", "left"), ("what it does", "left")] + ([("options (defaults)", "left")] if family else [])
    table = fmt_table(title, columns, keep=("name",))
    for name in names:
        m = methods.get(name)
        table.add_row(name, m.summary, *([_resolved_defaults(m, family)] if family else []))
    return table


def gpu_table() -> Table:
    """The shipped GPU table (membench.gpu.specs): what `--gpu` can name."""
    from ..gpu import specs
    from ..units import format_bytes

    t = fmt_table("GPUs a CUDA target can name (--gpu)",
                  [("name", "left"), ("sm", "right"), ("memory", "right"), ("cuBLAS", "right"),
                   ("~context", "right"), ("SDPA", "left"), ("device name", "left")],  # the name torch reports last
                  keep=("name",), whole=("memory", "cuBLAS", "~context"),
                  caption=f"default {specs.DEFAULT_GPU}; sm: compute capability; cuBLAS: its workspace; "
                          "~context: typical CUDA context with lazy loading (varies with the driver); "
                          "SDPA: which kernel CUDA tries first")
    for g in specs.GPUS.values():
        order = "cudnn first" if g.prefers_cudnn_sdpa else "flash first"
        t.add_row(g.name, g.compute_capability, format_bytes(g.memory_bytes), format_bytes(g.cublas_workspace_bytes),
                  format_bytes(g.context_bytes), order, g.label)
    return t


def _trainable_table(model: str) -> Table:
    """Each method built on `model` (on meta: no memory, a second or two): what trains, with its resolved config."""
    import warnings

    from .. import methods
    from ..errors import UserError
    from ..runner import build
    from ..spec import RunSpec

    # the config each method is built with is the methods table's options column: not repeated here
    table = fmt_table(f"what each method trains on {model} (built on meta, with the options above)",
                      [("method", "left"), ("trainable params", "right"), ("trainable tensors", "left")],
                      keep=("method",))
    for name in methods.names():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trained = build(RunSpec(model=model, method=name, device="fake", target="cpu"), inputs=False).model
        except UserError as exc:
            table.add_row(name, "-", f"not on {model}: {exc}")
            continue
        params = dict(trained.named_parameters())
        train = [n for n, p in params.items() if p.requires_grad]
        count = sum(params[n].numel() for n in train)
        total = sum(p.numel() for p in params.values())
        table.add_row(name, f"{count:,} ({100 * count / total:.2f}%)", _which(train, len(params)))
    return table


def _resolved_defaults(method, family) -> str:
    """A method's options as they would run on `family` (family defaults and per-variant values filled in),
    without private fields or the ones the method's name fixes."""
    from ..errors import UserError

    try:
        return _options_text(method, method.make_config(family, {}).to_dict())
    except UserError as exc:
        return f"(not on {family.name}: {exc})"


def _options_text(method, values: dict) -> str:
    fixed = {"variant"} if values.get("variant") == method.name else set()
    shown = {k: v for k, v in values.items() if not k.startswith("_") and k not in fixed}
    return ", ".join(f"{k}={_show(v)}" for k, v in shown.items()) or "-"


def _show(value) -> str:
    if value is None:
        return "auto"  # chosen when the model is built (e.g. chunkloss' chunk from the vocabulary)
    if value == "":
        return "''"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or "[]"
    return str(value)


def _which(train: list[str], n_params: int) -> str:
    """Trainable tensors summarised by module: layer indices as *, peft prefixes dropped, biases folded."""
    import re

    if len(train) == n_params:
        return f"all {n_params} tensors"

    def short(name: str) -> str:
        name = re.sub(r"\.\d+\.", ".*.", name)
        name = re.sub(r"^(base_model\.model\.|base_model\.)", "", name)
        name = "*." + name.rsplit("*.", 1)[1] if "*." in name else name
        return name.rsplit(".", 1)[0] if "." in name else name  # the module, not weight/bias

    biases = [n for n in train if n.endswith(".bias")]
    rest = train
    parts = []
    if len(biases) >= 0.8 * len(train) and len(biases) > 4:
        parts.append(f"every *.bias ({len(biases)})")
        rest = [n for n in train if not n.endswith(".bias")]
    patterns = list(dict.fromkeys(short(n) for n in rest))
    parts += patterns[:6] + ([f"+{len(patterns) - 6} more"] if len(patterns) > 6 else [])
    return f"{len(train)} tensors: " + ", ".join(parts)
