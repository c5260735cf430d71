"""The report's figures: matplotlib (Agg) only, one function per kind of figure.

Every function takes the ReportData and returns a list of `Figure`s; a kind with
no data to draw returns []. Titles say what was measured, on which device and in
which dtype; runs on different devices never share an axis.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ..units import axis_unit
from .pareto import frontier_path, pareto_mask

GREY = "#b0b0b0"


@dataclass
class Figure:
    name: str  # file stem, unique in the report
    section: str  # heading the figure goes under in the HTML
    title: str
    fig: Any  # matplotlib Figure
    caption: str = ""


MIN_SLICE = 0.005  # the shortest a non-zero slice of a stacked bar is drawn, as a share of the axis


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.grid": True, "grid.alpha": 0.3,
                         "figure.dpi": 100, "savefig.dpi": 110, "legend.fontsize": 8.5})
    return plt


def slug(*parts) -> str:
    """A short file stem: readable parts cut to 20 characters each, plus a hash of the full text."""
    import hashlib

    parts = [str(p) for p in parts if p is not None and str(p) != ""]
    text = "-".join(re.sub(r"[^A-Za-z0-9.]+", "_", p.split(" (")[0]).strip("_")[:20] for p in parts)
    return f"{text}-{hashlib.sha1('|'.join(parts).encode()).hexdigest()[:6]}"


def _colors(keys) -> dict:
    plt = _plt()
    cmap = plt.get_cmap("tab10" if len(keys) <= 10 else "tab20")
    return {k: cmap(i % cmap.N) for i, k in enumerate(sorted(keys, key=str))}


def _ok(df, kind: str | None = None):
    out = df[df["status"] == "ok"]
    if kind is not None:
        out = out[out["kind"] == kind]
    return out


def _latest(df, by: list[str]):
    """One run per `by` combination: the most recent."""
    return df.sort_values("run_id").groupby(by, dropna=False, sort=False).tail(1)


def wrap(text: str, width: int = 95) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(str(text), width)) or str(text)


def _where(device_label: str, dtype: str) -> str:
    where = device_label if device_label.startswith("predicted") else f"device {device_label}"
    return f"{where}, {dtype}"


# ---- memory against sequence length / batch size ------------------------------------------------------------------


def memory_scaling(data) -> list[Figure]:
    plt = _plt()
    figs = []
    runs = _ok(data.runs, "memory").dropna(subset=["activation_bytes", "batch_size", "seq_len"])
    for (model, dtype, dev), g in runs.groupby(["model_label", "dtype", "device_label"], sort=True):
        for axis, fixed, what in (("seq_len", "batch_size", "sequence length (tokens)"),
                                  ("batch_size", "seq_len", "batch size (sequences)")):
            # the fixed value with the most points along the axis
            counts = g.groupby(fixed)[axis].nunique()
            if counts.empty or counts.max() < 2:
                continue
            fixed_value = counts.idxmax()
            sub = _latest(g[g[fixed] == fixed_value], ["method_label", axis])
            unit, div = axis_unit(float(sub[["activation_bytes", "peak_activation_bytes"]].max().max()))
            colors = _colors(sub["method_label"].unique())
            fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), sharex=True)
            for ax, col, label in ((axes[0], "activation_bytes", "activations saved for backward"),
                                   (axes[1], "peak_activation_bytes", "peak activations + temporaries (whole step)")):
                for method, m in sub.groupby("method_label", sort=True):
                    m = m.sort_values(axis)
                    ax.plot(m[axis], m[col] / div, marker="o", ms=4, label=wrap(method, 40), color=colors[method])
                ax.set_title(label)
                ax.set_xlabel(what)
                ax.set_ylabel(f"memory ({unit})")
                if sub[axis].max() / max(sub[axis].min(), 1) >= 8:
                    ax.set_xscale("log", base=2)
                ax.set_ylim(bottom=0)
            axes[1].legend(title="method", loc="upper left", bbox_to_anchor=(1.01, 1.0))
            fixed_txt = f"batch size {fixed_value}" if fixed == "batch_size" else f"sequence length {fixed_value}"
            title = f"Activation memory vs {what.split(' (')[0]}: {model}, {fixed_txt}, {_where(dev, dtype)}"
            fig.suptitle(wrap(title, 120))
            fig.tight_layout()
            figs.append(Figure(slug("memory-vs", axis, model, dtype, dev), "Memory against sequence length and "
                               "batch size", title, fig, "One line per method; left: bytes autograd keeps at the end "
                               "of forward, right: the peak of live activations over forward, backward and the "
                               "optimizer step (recomputation included)."))
    return figs


# ---- per-layer stacked bars and the breakdown per method ----------------------------------------------------------


def _reference_configs(data):
    """Per (model, dtype, device): the (batch, seq) measured with the most methods -> its runs (latest each)."""
    runs = _ok(data.runs).dropna(subset=["activation_bytes"])
    mem = runs[runs["kind"] == "memory"]
    out = []
    for key, g in (mem if not mem.empty else runs).groupby(["model_label", "dtype", "device_label"], sort=True):
        counts = g.groupby(["batch_size", "seq_len"])["method_label"].nunique()
        b, s = max(counts.index, key=lambda bs: (counts[bs], int(bs[0]) * int(bs[1]), int(bs[1])))
        sub = _latest(g[(g["batch_size"] == b) & (g["seq_len"] == s)], ["method_label"]).sort_values("method_label")
        out.append((key, int(b), int(s), sub))
    return out


def _layer_colors(names: list[str]) -> dict:
    plt = _plt()
    cmap = plt.get_cmap("viridis")
    numbered = [n for n in names if re.search(r"\.\d+$", n)]
    colors = {}
    for i, n in enumerate(numbered):
        colors[n] = cmap(0.1 + 0.85 * i / max(1, len(numbered) - 1))
    fixed = {"embeddings": "#e377c2", "head": "#ff7f0e", "outside": "#7f7f7f"}
    other = plt.get_cmap("Set2")
    for i, n in enumerate(n for n in names if n not in colors):
        colors[n] = fixed.get(n, other(i % 8))
    return colors


def layer_bars(data) -> list[Figure]:
    plt = _plt()
    figs = []
    for (model, dtype, dev), b, s, sub in _reference_configs(data):
        lay = data.layers[data.layers["run_id"].isin(sub["run_id"].tolist())]
        if lay.empty:
            continue
        names = list(dict.fromkeys(lay.sort_values(["run_id", "idx"])["layer"].astype(str)))
        # keep the order of the run with the most layers
        longest = lay.groupby("run_id")["layer"].count().idxmax()
        order = list(lay[lay["run_id"] == longest].sort_values("idx")["layer"].astype(str))
        names = order + [n for n in names if n not in order]
        colors = _layer_colors(names)
        top = max(float(sub["peak_activation_bytes"].max()), float(lay.groupby("run_id")["activation_bytes"].sum().max()))
        unit, div = axis_unit(top)
        floor = MIN_SLICE * top / div  # a non-zero slice is drawn at least this tall
        fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(sub) + 4), 4.8))
        x = list(range(len(sub)))
        for xi, (_, run) in zip(x, sub.iterrows(), strict=True):
            rows = lay[lay["run_id"] == run["run_id"]].set_index("layer")["activation_bytes"]
            bottom = 0.0
            for n in names:
                v = float(rows.get(n, 0)) / div
                if v > 0:
                    v = max(v, floor)
                    ax.bar(xi, v, bottom=bottom, color=colors[n], edgecolor="white", linewidth=0.4, width=0.65)
                    bottom += v
            ax.plot(xi, float(run["peak_activation_bytes"]) / div, marker="D", color="black", ms=6, ls="none")
        ax.set_xticks(x, [wrap(m, 16) for m in sub["method_label"]], rotation=25 if len(sub) > 5 else 0,
                      ha="right" if len(sub) > 5 else "center", fontsize=8.5)
        ax.set_ylabel(f"activation memory ({unit})")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("method")
        handles = _layer_legend(plt, names, colors)
        handles.append(plt.Line2D([], [], marker="D", color="black", ls="none", label="peak activations (step)"))
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="saved for backward by")
        title = f"Activation bytes per layer: {model}, batch {b}, seq {s}, {_where(dev, dtype)}"
        ax.set_title(wrap(title, 90))
        fig.tight_layout()
        figs.append(Figure(slug("layers", model, dtype, dev), "Per-layer activations and memory breakdown", title, fig,
                           "Stacked: bytes each layer keeps for backward at the end of forward (bottom layer first); "
                           f"a layer that keeps anything is drawn at least {100 * MIN_SLICE:g}% of the axis tall, so "
                           "small rows (embeddings, MEFT's layers) stay visible. Diamond: the peak of live "
                           "activations over the whole step, which is higher for methods that recompute in "
                           "backward (checkpointing, MEFT)."))
    return figs


def _layer_legend(plt, names, colors):
    from matplotlib.patches import Patch

    numbered = [n for n in names if re.search(r"\.\d+$", n)]
    if len(numbered) <= 12:
        return [Patch(color=colors[n], label=n) for n in names]
    out, stacks = [], {}
    for n in numbered:
        stacks.setdefault(n.rsplit(".", 1)[0], []).append(n)
    for n in names:
        if n in numbered:
            stack = n.rsplit(".", 1)[0]
            if stacks.get(stack) and n == stacks[stack][0]:
                ls = stacks.pop(stack)
                out.append(Patch(color=colors[ls[0]], label=f"{ls[0]} (dark) …"))
                out.append(Patch(color=colors[ls[-1]], label=f"… {ls[-1]} (light)"))
        else:
            out.append(Patch(color=colors[n], label=n))
    return out


def breakdown(data) -> list[Figure]:
    plt = _plt()
    figs = []
    parts = (("param_bytes", "parameters", "#4c72b0"), ("optimizer_bytes", "optimizer state (AdamW)", "#55a868"),
             ("fixed_bytes", "buffers and the batch", "#8172b2"),
             ("at_peak_bytes", "at the step's peak: activations, temporaries, gradients", "#c44e52"))
    for (model, dtype, dev), b, s, sub in _reference_configs(data):
        vals = breakdown_parts(sub)
        unit, div = axis_unit(float(vals.sum(axis=1).max()))
        fig, ax = plt.subplots(figsize=(10, 0.55 * len(sub) + 2.2))
        y = list(range(len(sub)))
        left = [0.0] * len(sub)
        for col, label, color in parts:
            v = (vals[col] / div).tolist()
            ax.barh(y, v, left=left, color=color, label=label, height=0.6)
            left = [a + c for a, c in zip(left, v, strict=True)]
        for yi, total in zip(y, left, strict=True):
            ax.text(total, yi, f" {total:,.1f} {unit} estimated peak", va="center", fontsize=8)
        ax.set_yticks(y, [wrap(m, 30) for m in sub["method_label"]])
        ax.invert_yaxis()
        ax.set_xlabel(f"memory ({unit})")
        ax.set_xlim(0, max(left) * 1.35 if max(left) > 0 else 1)
        ax.legend(loc="lower right", fontsize=8)
        title = f"Memory breakdown per method: {model}, batch {b}, seq {s}, {_where(dev, dtype)}"
        ax.set_title(wrap(title, 90))
        fig.tight_layout()
        figs.append(Figure(slug("breakdown", model, dtype, dev), "Per-layer activations and memory breakdown", title,
                           fig, "Each bar is the estimated peak memory of one training step, and its parts add up to "
                           "it: parameters (frozen and trainable), AdamW state, buffers and the batch, and what is "
                           "live at the step's peak (activations, temporaries and the gradients that exist by "
                           "then). Gradients are not drawn on top of the peak activations: at the peak only "
                           "part of them exist."))
    return figs


def breakdown_parts(runs):
    """Per run, the parts of the estimated peak (they add up to `estimated_peak_bytes`)."""
    import pandas as pd

    def col(name):
        return runs[name].astype("Float64").fillna(0).astype(float) if name in runs else pd.Series(0.0, runs.index)

    params, opt = col("param_bytes"), col("optimizer_bytes")
    fixed = col("buffer_bytes") + col("input_bytes")
    est = col("estimated_peak_bytes")
    at_peak = (est - params - opt - fixed).clip(lower=0)
    return pd.DataFrame({"param_bytes": params, "optimizer_bytes": opt, "fixed_bytes": fixed,
                         "at_peak_bytes": at_peak})


def _isnan(v) -> bool:
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return True


# ---- accuracy ------------------------------------------------------------------------------------------------------


def train_runs(data):
    runs = _ok(data.runs, "train")
    if "accuracy" not in runs.columns:
        return runs.iloc[0:0]
    return runs.dropna(subset=["accuracy"])


def data_label(runs) -> list[str]:
    """Which data a training run learned from and was tested on ("3000 train / 1000 test examples"):
    runs on different data never share a frontier or a majority-class line."""
    def num(r, key):
        v = r.get(key)
        return None if v is None or _isnan(v) else int(v)

    out = []
    for _, r in runs.iterrows():
        n_train, n_test = num(r, "n_train"), num(r, "n_test")
        parts = ([f"{n_train} train"] if n_train is not None else []) + ([f"{n_test} test"] if n_test else [])
        out.append(" / ".join(parts) + " examples" if parts else "")
    return out


def pareto(data) -> list[Figure]:
    plt = _plt()
    figs = []
    runs = train_runs(data).copy()
    runs["data_label"] = data_label(runs)
    for (task, model, dev, dtype, data_set), g in runs.groupby(["task", "model_label", "device_label", "dtype",
                                                                 "data_label"], sort=True):
        g = _latest(g, ["method_label"]).sort_values("method_label")
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
        colors = _colors(g["method_label"].unique())
        for ax, col, what in ((axes[0], "estimated_peak_bytes", "estimated peak memory of a training step"),
                              (axes[1], "peak_activation_bytes", "peak activation memory of a training step")):
            sub = g.dropna(subset=[col])
            if sub.empty:
                ax.set_visible(False)
                continue
            unit, div = axis_unit(float(sub[col].max()))
            cost = (sub[col].astype(float) / div).tolist()
            acc = sub["accuracy"].astype(float).tolist()
            mask = pareto_mask(cost, acc)
            for c, a, m, label in zip(cost, acc, mask, sub["method_label"], strict=True):
                ax.scatter(c, a, s=70 if m else 45, color=colors[label] if m else GREY, edgecolor="black" if m else
                           GREY, zorder=3, label=label if m else f"{label} (dominated)")
                ax.annotate(wrap(label, 30), (c, a), textcoords="offset points", xytext=(6, 5), fontsize=8,
                            color="black" if m else "#808080")
            path = frontier_path(cost, acc)
            if len(path) > 1:
                ax.plot([p[0] for p in path], [p[1] for p in path], color="black", lw=1.2, zorder=2,
                        label="Pareto frontier")
            maj = g["majority_accuracy"].dropna() if "majority_accuracy" in g else []
            if len(maj):  # one test set per figure (data_label), so one reference line
                ax.axhline(float(maj.iloc[-1]), color="#c44e52", ls="--", lw=1,
                           label="majority class" + (f" ({data_set})" if data_set else ""))
            ax.set_xlabel(f"{what} ({unit})")
            ax.set_xlim(left=0, right=max(cost) * 1.25 if max(cost) > 0 else 1)
            ax.set_title(f"accuracy vs {what.split(' of ')[0]}")
        axes[0].set_ylabel("test accuracy")
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            axes[1 if axes[1].get_visible() else 0].legend(handles, labels, loc="upper left",
                                                           bbox_to_anchor=(1.01, 1.0), fontsize=8)
        title = f"Memory vs accuracy ({task}" + (f", {data_set}" if data_set else "") + f"): {model}, {_where(dev, dtype)}"
        fig.suptitle(wrap(title, 120))
        fig.tight_layout()
        figs.append(Figure(slug("pareto", task, model, dtype, dev, data_set), "Memory against accuracy (Pareto frontier)",
                           title, fig, "Each point is a training run (latest per method setting). Coloured points "
                           "are on the Pareto frontier (no other run uses less memory and reaches higher accuracy); "
                           "grey points are dominated. Memory is measured on one profiled step of the largest "
                           "training batch."))
    return figs


def training_curves(data) -> list[Figure]:
    plt = _plt()
    figs = []
    runs = train_runs(data)
    s = data.series
    for (task, model, dev, dtype), g in runs.groupby(["task", "model_label", "device_label", "dtype"], sort=True):
        g = _latest(g, ["method_label"]).sort_values("method_label")
        sub = s[s["run_id"].isin(g["run_id"].tolist())]
        if sub.empty:
            continue
        colors = _colors(g["method_label"].unique())
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        for _, run in g.iterrows():
            rs = sub[sub["run_id"] == run["run_id"]]
            loss = rs[rs["name"] == "train_loss"].sort_values("step")
            if not loss.empty:
                win = max(1, len(loss) // 25)
                axes[0].plot(loss["step"], loss["value"].rolling(win, min_periods=1).mean(),
                             color=colors[run["method_label"]], label=run["method_label"])
            acc = rs[rs["name"] == "val_accuracy"].sort_values("step")
            if not acc.empty:
                axes[1].plot(acc["step"], acc["value"], marker="o", color=colors[run["method_label"]],
                             label=run["method_label"])
        axes[0].set_xlabel("optimizer step")
        axes[0].set_ylabel("training loss (cross-entropy, smoothed)")
        axes[0].set_title("training loss")
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel("validation accuracy")
        axes[1].set_title("validation accuracy per epoch")
        epochs = sorted(sub[sub["name"] == "val_accuracy"]["step"].unique())
        if 0 < len(epochs) <= 20:
            axes[1].set_xticks(epochs)
            axes[1].set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        title = f"Training curves ({task}): {model}, {_where(dev, dtype)}"
        fig.suptitle(wrap(title, 120))
        fig.tight_layout()
        figs.append(Figure(slug("curves", task, model, dtype, dev), "Memory against accuracy (Pareto frontier)",
                           title, fig))
    return figs


def step_time(data) -> list[Figure]:
    plt = _plt()
    figs = []
    runs = _ok(data.runs)
    if "step_time_s" not in runs.columns:
        return figs
    runs = runs.dropna(subset=["step_time_s", "estimated_peak_bytes"])
    for dev, g in runs.groupby("device_label", sort=True):
        g = _latest(g, ["task", "model_label", "method_label", "dtype", "batch_size", "seq_len"])
        unit, div = axis_unit(float(g["estimated_peak_bytes"].max()))
        fig, ax = plt.subplots(figsize=(9.5, 4.8))
        colors = _colors(g["method_label"].unique())
        markers = dict(zip(sorted(g["model_label"].unique()), "osD^vP*Xh<>", strict=False))
        multi_dtype, multi_model = g["dtype"].nunique() > 1, g["model_label"].nunique() > 1
        for (method, model, dtype), m in g.groupby(["method_label", "model_label", "dtype"], sort=True):
            label = method + (f" · {model}" if multi_model else "") + (f" · {dtype}" if multi_dtype else "")
            xs, ys = m["estimated_peak_bytes"] / div, m["step_time_s"] * 1000
            ax.scatter(xs, ys, color=colors[method], marker=markers.get(model, "o"), s=60, edgecolor="black",
                       label=wrap(label, 45), zorder=3)
            for x_, y_ in zip(xs, ys, strict=True):
                ax.annotate(method, (x_, y_), textcoords="offset points", xytext=(6, 4), fontsize=8)
        ax.set_xlabel(f"estimated peak memory of a training step ({unit})")
        ax.set_ylabel("time per training step (ms, median)")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        dtypes = ", ".join(sorted(g["dtype"].astype(str).unique()))
        models = ", ".join(sorted(g["model_label"].astype(str).unique()))
        title = f"Step time vs memory: {models}, device {dev}, {dtypes}"
        ax.set_title(wrap(title, 90))
        fig.tight_layout()
        figs.append(Figure(slug("steptime", dev), "Step time against memory", title, fig,
                           "Median wall time of one optimizer step (forward, backward, AdamW) during training, "
                           "against the profiled step's estimated peak memory. Only runs on the same device share "
                           "an axis."))
    return figs


# ---- MEFT verify: reconstruction and gradient error by depth -------------------------------------------------------


def error_kind(name: str) -> str | None:
    n = name.lower()
    if not re.search(r"err|gap|diff", n):
        return None
    if "recon" in n or "input" in n:
        return "reconstruction error"
    if "grad" in n:
        return "gradient error"
    if "start" in n and "gap" in n:  # `membench verify`: the starting point's distance from the pre-trained model
        return "starting-point gap"
    return name


def verify_errors(data) -> list[Figure]:
    plt = _plt()
    figs = []
    runs = data.runs[data.runs["kind"] == "verify"]
    if runs.empty or data.series.empty:
        return figs
    s = data.series[data.series["run_id"].isin(runs["run_id"].tolist())].copy()
    s["panel"] = [error_kind(str(n)) for n in s["name"]]
    s = s.dropna(subset=["panel"])
    if s.empty:
        return figs
    info = runs.set_index("run_id")
    for (model, dev), g in runs.groupby(["model_label", "device_label"], sort=True):
        sub = s[s["run_id"].isin(g["run_id"].tolist())]
        if sub.empty:
            continue
        panels = sorted(sub["panel"].unique(), key=lambda p: (p != "reconstruction error", p != "gradient error", p))
        fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels) + 1.5, 4.3), squeeze=False)
        labels = {rid: f"{info.loc[rid, 'method_label']} · {info.loc[rid, 'dtype']}" for rid in g["run_id"]}
        colors = _colors(set(labels.values()))
        for ax, panel in zip(axes[0], panels, strict=True):
            p = sub[sub["panel"] == panel]
            pos = p["value"][p["value"] > 0]
            log = len(pos) > 0 and float(pos.max()) > 10 * float(pos.min())  # less than a decade reads better linear
            names = sorted(p["name"].unique())  # several per run (encoder/decoder stacks): one line style each
            for (rid, name), line in p.groupby(["run_id", "name"], sort=True):
                line = line.sort_values("step")
                extra = f" [{name}]" if len(names) > 1 else ""
                style = dict(ls=("-", "--", ":", "-.")[names.index(name) % 4],
                             marker="osD^"[names.index(name) % 4])
                if log:  # exact zeros (e.g. the bottom layer's starting-point gap) have no log position
                    zero = line[line["value"] <= 0]
                    line = line[line["value"] > 0]
                    if len(zero):
                        extra += f" (exactly 0 at layer {', '.join(str(int(k)) for k in zero['step'])})"
                ax.plot(line["step"], line["value"], ms=3.5, color=colors[labels[rid]], label=labels[rid] + extra,
                        **style)
            ax.set_yscale("log" if log else "linear")
            if not log:
                ax.set_ylim(0, max(float(p["value"].max()), 1e-30) * 1.15)
                ax.ticklabel_format(axis="y", useOffset=False)
            ax.set_xlabel("layer (depth, 0 = bottom)")
            ax.set_ylabel(f"relative {panel}" + (" (log scale)" if log else ""))
            ax.set_title(f"{panel} by depth")
            ax.xaxis.get_major_locator().set_params(integer=True)
            if len(names) > 1 and ax is not axes[0][-1]:  # series names differ per panel: each gets its legend
                ax.legend(fontsize=7, title="method · dtype", title_fontsize=7)
        axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="method · dtype")
        title = f"MEFT verification: error vs depth, {model}, device {dev}"
        fig.suptitle(wrap(title, 120))
        fig.tight_layout()
        figs.append(Figure(slug("verify", model, dev), "MEFT reconstruction and gradient error", title, fig,
                           "From `membench verify` runs: the error of the layer inputs MEFT reconstructs in "
                           "backward, and of the gradients against plain autograd, per layer; where stored, the "
                           "starting-point gap: how far the input each pre-trained layer sees at initialisation is "
                           "from the unmodified model's."))
    return figs


ALL = (memory_scaling, layer_bars, breakdown, pareto, training_curves, step_time, verify_errors)
