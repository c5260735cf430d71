"""Write the report: PNG figures and one self-contained HTML file (figures inlined as base64, no network)."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..paths import write_bytes_atomic
from ..units import mib
from . import figures as F
from .data import load_report_data
from .pareto import pareto_mask

SECTIONS = ("Memory against accuracy (Pareto frontier)", "Memory against sequence length and batch size",
            "Per-layer activations and memory breakdown", "Step time against memory",
            "MEFT reconstruction and gradient error")


@dataclass
class Report:
    html_path: Path
    pngs: list[Path] = field(default_factory=list)
    runs: int = 0
    skipped: list[str] = field(default_factory=list)


def build_report(db_path: str | os.PathLike, out_dir: str | os.PathLike) -> Report:
    data = load_report_data(db_path)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out}: a file is in the way; give a folder for the report")
    out.mkdir(parents=True, exist_ok=True)
    plt = F._plt()
    figs: list[F.Figure] = []
    skipped = []
    for fn in F.ALL:
        made = fn(data)
        if not made:
            skipped.append(fn.__name__)
        figs.extend(made)
    seen: dict[str, int] = {}
    pngs, blocks = [], []
    for f in figs:
        n = seen.get(f.name, 0)
        seen[f.name] = n + 1
        name = f"{f.name}-{n}" if n else f.name
        buf = io.BytesIO()
        f.fig.savefig(buf, format="png", bbox_inches="tight")
        plt.close(f.fig)
        png = out / f"{name}.png"
        write_bytes_atomic(png, buf.getvalue())
        pngs.append(png)
        blocks.append((f, png.name, base64.b64encode(buf.getvalue()).decode("ascii")))
    page = render_html(data, blocks)
    html_path = out / "report.html"
    write_bytes_atomic(html_path, page.encode("utf-8"))
    return Report(html_path, pngs, len(data.runs), skipped)


# ---- HTML ----------------------------------------------------------------------------------------------------------

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px auto;max-width:1280px;color:#222;
     padding:0 16px;line-height:1.4}
h1{font-size:1.6em;margin-bottom:0.2em} h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:2em}
figure{margin:1.2em 0;padding:8px;border:1px solid #e4e4e4;border-radius:6px;background:#fff}
figure img{max-width:100%;height:auto;display:block;margin:auto}
figcaption{font-size:0.9em;color:#555;margin-top:6px}
table{border-collapse:collapse;font-size:0.85em;margin:0.8em 0;width:100%}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:right;vertical-align:top}
th{background:#f2f2f2;position:sticky;top:0} td.l,th.l{text-align:left}
tr:nth-child(even){background:#fafafa} .front{font-weight:bold;color:#1a7f37} .dom{color:#888}
.meta{color:#555;font-size:0.9em} details{margin:0.4em 0} code,pre{font-size:0.85em;white-space:pre-wrap}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:6px 10px;font-size:0.9em}
nav a{margin-right:1em}
"""


def _e(v) -> str:
    return html.escape("" if v is None else str(v))


def _isnull(v) -> bool:
    try:
        import pandas as pd

        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _mib(v) -> str:
    return "" if _isnull(v) else mib(v)


def _num(v, fmt="{:,.0f}") -> str:
    return "" if _isnull(v) else fmt.format(float(v))


def _table(headers: list[str], rows: list[list[str]], left: set[int] | None = None, raw: set[int] | None = None,
           row_class=None) -> str:
    left, raw = left or {0}, raw or set()
    out = ["<table><thead><tr>"]
    out += [f"<th class='{'l' if i in left else ''}'>{_e(h)}</th>" for i, h in enumerate(headers)]
    out.append("</tr></thead><tbody>")
    for r_i, row in enumerate(rows):
        cls = f" class='{row_class[r_i]}'" if row_class and row_class[r_i] else ""
        out.append(f"<tr{cls}>" + "".join(
            f"<td class='{'l' if i in left else ''}'>{v if i in raw else _e(v)}</td>" for i, v in enumerate(row))
            + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _train_table(data) -> str:
    runs = F.train_runs(data)
    if runs.empty:
        return ""
    rows, classes = [], []
    front = {}
    for _, g in runs.groupby(["task", "model_label", "device_label", "dtype"]):
        g = F._latest(g, ["method_label"])
        mask = pareto_mask(g["estimated_peak_bytes"].astype(float).tolist(), g["accuracy"].astype(float).tolist())
        front.update(dict(zip(g["run_id"], mask, strict=True)))
    for _, r in runs.sort_values(["task", "model_label", "accuracy"], ascending=[True, True, False]).iterrows():
        on = front.get(r["run_id"])
        rows.append([r["run_id"], r["task"], r["model_label"], r["method_label"], r["device_label"], r["dtype"],
                     _num(r.get("accuracy"), "{:.4f}"), _num(r.get("val_accuracy"), "{:.4f}"),
                     _num(r.get("majority_accuracy"), "{:.4f}"), _num(r.get("epochs_run")),
                     _num(r.get("n_train")), _num(r.get("step_time_s"), "{:.3f}"),
                     _mib(r.get("estimated_peak_bytes")), _mib(r.get("peak_activation_bytes")),
                     _num(r.get("num_trainable_params")),
                     "frontier" if on else ("dominated" if on is False else "older run")])
        classes.append("front" if on else "dom")
    return _table(["run", "task", "model", "method", "device", "dtype", "test acc.", "best val acc.",
                   "majority", "epochs", "train ex.", "step time (s)", "est. peak (MiB)", "peak act. (MiB)",
                   "trainable params", "Pareto"], rows, left={1, 2, 3, 4, 5, 15}, row_class=classes)


def _memory_table(data) -> str:
    runs = F._ok(data.runs, "memory")
    if runs.empty:
        return ""
    rows = []
    for _, r in runs.sort_values(["model_label", "dtype", "device_label", "method_label", "batch_size",
                                  "seq_len"]).iterrows():
        rows.append([r["run_id"], r["model_label"], r["method_label"], r["batch_size"], r["seq_len"], r["dtype"],
                     _recipe(r), r["device_label"], _mib(r["activation_bytes"]), _mib(r["peak_activation_bytes"]),
                     _mib(r["param_bytes"]), _mib(r["grad_bytes"]), _mib(r["optimizer_bytes"]),
                     _mib(r["estimated_peak_bytes"]), _mib(r.get("cuda_max_allocated_bytes"))])
    return _table(["run", "model", "method", "batch", "seq", "dtype", "recipe", "device", "activations (MiB)",
                   "peak act. (MiB)", "params (MiB)", "grads (MiB)", "optimizer (MiB)", "est. peak (MiB)",
                   "CUDA max alloc. (MiB)"], rows, left={1, 2, 5, 6, 7})


def _recipe(r) -> str:
    """precision, optimizer and gradient accumulation of a run ('bf16-mixed · adamw-foreach · x4'); runs stored
    before they were columns show what they have."""
    import pandas as pd

    def present(v):
        return v is not None and not pd.isna(v) and str(v) != ""

    parts = [str(r.get(c)) for c in ("quant", "precision", "optimizer") if present(r.get(c))]
    accum = r.get("grad_accum")
    if present(accum) and int(accum) > 1:
        parts.append(f"x{int(accum)} accumulated")
    return " · ".join(parts) or "-"


def _verify_table(data) -> str:
    runs = data.runs[data.runs["kind"] == "verify"]
    if runs.empty:
        return ""
    metric_cols = [c for c in runs.columns if c not in F_BASE_COLUMNS and runs[c].notna().any()
                   and str(runs[c].dtype).startswith(("float", "Float"))]
    rows = [[r["run_id"], r["model_label"], r["method_label"], r["dtype"], r["device_label"], r["status"],
             *[_num(r[c], "{:.3g}") for c in metric_cols]] for _, r in runs.iterrows()]
    return _table(["run", "model", "method", "dtype", "device", "status", *metric_cols], rows, left={1, 2, 3, 4, 5})


F_BASE_COLUMNS = {"loss", "wall_s"}


def _failed_table(data) -> str:
    runs = data.runs[data.runs["status"] != "ok"]
    if runs.empty:
        return ""
    rows = [[r["run_id"], r["kind"], r["status"], r["model_label"], r["method_label"], r["batch_size"],
             r["seq_len"], r["dtype"], r["device_label"],
             (str(r["error"]) if not _isnull(r["error"]) else "")[-300:]]  # a traceback's tail names the error
            for _, r in runs.iterrows()]
    return _table(["run", "kind", "status", "model", "method", "batch", "seq", "dtype", "device", "error"], rows,
                  left={1, 2, 3, 4, 7, 8, 9})


def _provenance_table(data) -> str:
    rows = []
    for _, r in data.runs.iterrows():
        try:
            cfg = json.dumps(json.loads(r["config"]), indent=1, sort_keys=True)
        except (TypeError, ValueError):
            cfg = str(r["config"])
        created = "" if _isnull(r["created_at"]) else str(r["created_at"])[:19].replace("T", " ")
        rows.append([r["run_id"], r["kind"], r["status"], created, r["device_label"], _e(r.get("hostname")),
                     _e(r.get("membench_version")), _e(r.get("torch_version")), _e(r.get("transformers_version")),
                     _e(r.get("git_revision")), _e(r.get("sweep") if not _isnull(r.get("sweep")) else ""),
                     f"<details><summary>config</summary><pre>{_e(cfg)}</pre></details>"])
    return _table(["run", "kind", "status", "created (UTC)", "device", "host", "membench", "torch", "transformers",
                   "git revision", "sweep", "configuration"], rows, left=set(range(12)), raw={5, 6, 7, 8, 9, 10, 11})


def render_html(data, blocks) -> str:
    runs = data.runs
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    kinds = runs["kind"].value_counts().to_dict()
    statuses = runs["status"].value_counts().to_dict()
    devices = sorted(runs["device_label"].unique())
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>membench report: "
             f"{_e(Path(data.db_path).name)}</title><style>{CSS}</style></head><body>",
             "<h1>membench report</h1>",
             f"<p class='meta'>database <code>{_e(os.path.abspath(data.db_path))}</code> · {len(runs)} runs "
             f"({', '.join(f'{v} {k}' for k, v in kinds.items())}; "
             f"{', '.join(f'{v} {k}' for k, v in statuses.items())}) · devices: {_e('; '.join(devices))} · "
             f"generated {now}</p>",
             "<p class='note'>Memory is in binary units (1 MiB = 2<sup>20</sup> bytes). <b>predicted</b> runs "
             "ran on fake tensors (no memory used) for a target: a CUDA GPU (its kernels' saved tensors, the "
             "caching allocator modelled) or CPU kernels; <b>cpu</b> and <b>cuda</b> runs are measured on real "
             "tensors. Figures never mix devices or targets on one axis.</p>"]
    by_section: dict[str, list] = {}
    for f, png, b64 in blocks:
        by_section.setdefault(f.section, []).append((f, png, b64))
    order = [s for s in SECTIONS if s in by_section] + [s for s in by_section if s not in SECTIONS]
    nav = [f"<a href='#s{i}'>{_e(s)}</a>" for i, s in enumerate(order)] + ["<a href='#tables'>Tables</a>",
                                                                           "<a href='#provenance'>Provenance</a>"]
    parts.append("<nav>" + " ".join(nav) + "</nav>")
    if not blocks:
        parts.append("<p class='note'>No figure could be drawn from these runs (figures need at least two "
                     "sequence lengths or batch sizes, stored layers, training runs or verify series).</p>")
    for i, section in enumerate(order):
        parts.append(f"<h2 id='s{i}'>{_e(section)}</h2>")
        for f, png, b64 in by_section[section]:
            parts.append(f"<figure><img alt='{_e(f.title)}' src='data:image/png;base64,{b64}'>"
                         f"<figcaption><b>{_e(f.title)}</b> ({_e(png)}). {_e(f.caption)}</figcaption></figure>")
    parts.append("<h2 id='tables'>Tables</h2>")
    for title, body in (("Training runs", _train_table(data)), ("Memory runs", _memory_table(data)),
                        ("Verification runs", _verify_table(data)), ("Runs that did not finish", _failed_table(data))):
        if body:
            parts.append(f"<h3>{_e(title)}</h3>{body}")
    parts.append("<h2 id='provenance'>Provenance of every run</h2>")
    parts.append(_provenance_table(data))
    parts.append("</body></html>")
    return "\n".join(parts)
