"""How a MEFT stack runs inside an unmodified transformers model.

Each adapted layer of a stack (`family.stacks(model)`) is replaced by a thin
`MeftLayer` shim that keeps the original layer as its child `.layer`. The HF
model still loops over its layer list calling `layer(hidden, *args, **kwargs)`:

    shim 0 (first adapted layer):  runs the whole two-stream stack with those
                                   args/kwargs, returns the combined hidden state
    shims 1..n-1:                  return their input unchanged

Layers below `frozen_bottom` stay plain frozen PLM layers (not wrapped).
Of the adapted layers, the bottom R run inside `ReversibleStack` (train mode
with grad enabled); the rest, and everything in eval / no-grad mode, run the
same couplings with plain autograd.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .._bottleneck import BottleneckShape
from ..base import neighbour
from .coupling import VARIANTS, BlockCall, Coupling, attach_adapters
from .reversible import StackCall, run_stack

_CACHE_KEYS = ("cache", "past_key_values", "past_key_value")


class MeftLayer(nn.Module):
    """Shim around one PLM layer: holds its adapters; the first shim runs the stack."""

    def __init__(self, layer: nn.Module, index: int):
        super().__init__()
        self.layer = layer
        self.block = BlockCall()
        self.meft_index = index
        self.meft_on = True
        self._ffn_x = None
        self._hooks: list = []
        object.__setattr__(self, "_stack", None)

    def __getattr__(self, name):
        """Attributes HF reads off its layers (e.g. `attention_type`) come from the wrapped layer."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules")
            if modules is None or "layer" not in modules or name.startswith("__"):
                raise
            return getattr(modules["layer"], name)

    def forward(self, hidden, *args, **kwargs):
        stack: MeftStack = self.__dict__["_stack"]
        if not stack.enabled:
            return self.layer(hidden, *args, **kwargs)
        if self.meft_index == 0:
            return stack.run(hidden, args, kwargs)
        return hidden


class MeftStack:
    """The adapted part of one layer stack (plain Python object shared by its shims)."""

    def __init__(self, name: str, shims: list[MeftLayer], family, opts, decoder: bool):
        self.name, self.shims, self.family, self.opts = name, shims, family, opts
        self.variant = opts.variant
        self.couplings = [Coupling(s, family, opts.variant, opts.lam, opts.beta, opts.ffn_chunks) for s in shims]
        n = len(shims)
        self.n_reversible = n - opts.plain_top if opts.reversible == -1 else opts.reversible
        self.n_reversible = max(0, min(self.n_reversible, n))
        self.output = opts.output if opts.output != "auto" else ("scaled" if decoder else "mean")
        self.enabled = True
        self.trace: dict | None = None  # set by verify/tests: records streams and grads

    # which stream carries the PLM layers' outputs at the top (for "scaled" / "merge")
    @property
    def plm_stream(self) -> int:
        return VARIANTS[self.variant].plm_stream

    def set_enabled(self, on: bool) -> None:
        self.enabled = on
        for s in self.shims:
            s.meft_on = on

    def stream_dtype(self, compute_dtype):
        return {"fp64": torch.float64, "fp32": torch.float32}.get(self.opts.recon_dtype, compute_dtype)

    def run(self, hidden, args, kwargs):
        compute = hidden.dtype
        sd = self.stream_dtype(compute)
        trace = self.trace
        if trace is not None:
            if not hidden.requires_grad:
                hidden = hidden.detach().requires_grad_()
            trace["input"] = hidden
            hidden.register_hook(lambda g: trace.__setitem__("input_grad", g))
        reversible = self.n_reversible if (torch.is_grad_enabled() and self.shims[0].training) else 0
        start = 0
        x1 = x2 = None
        if reversible:
            r_args, r_kwargs = _without_cache(self.shims[0].layer, args, kwargs)
            call = StackCall(self.couplings[:reversible], r_args, r_kwargs, compute, sd,
                             checkpoint_every=self.opts.checkpoint_every, restore_rng=self.opts._restore_rng,
                             trace=trace)
            x1, x2 = run_stack(call, hidden)
            start = reversible
        else:
            x1 = x2 = hidden.to(sd)
        plm_inputs = trace.setdefault("plm_in", {}) if trace is not None else None
        for i in range(start, len(self.couplings)):
            if trace is not None:
                trace.setdefault("inputs", {})[i] = (x1.detach().clone(), x2.detach().clone())
            rec = [] if trace is not None else None
            x1, x2 = self.couplings[i].step(x1, x2, args, kwargs, compute, trace=rec)
            if rec:
                plm_inputs[i] = rec[0]
        return self.combine(x1, x2).to(compute)

    def combine(self, first, second):
        s = self.opts.scale
        if self.output == "mean":
            return (first + second) / 2
        if self.output == "scaled":
            return s * first + second if self.plm_stream == 1 else first + s * second
        merge = self.shims[-1].merge
        return merge(torch.cat([first, second], dim=-1).to(merge.weight.dtype))


def _without_cache(layer, args, kwargs):
    """The per-call inputs with the KV cache removed: a recompute must not append to it twice."""
    import inspect

    try:
        bound = inspect.signature(layer.forward).bind_partial(None, *args, **kwargs)
    except TypeError:
        bound = None
    if bound is not None:
        params = list(inspect.signature(layer.forward).parameters)
        args = list(args)
        for j in range(len(args)):
            name = params[j + 1] if j + 1 < len(params) else None
            if name in _CACHE_KEYS:
                args[j] = None
            elif name == "use_cache":
                args[j] = False
        args = tuple(args)
    kwargs = dict(kwargs)
    for key in _CACHE_KEYS:
        if key in kwargs:
            kwargs[key] = None
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    return args, kwargs


def install(model, family, opts) -> list[MeftStack]:
    """Wrap every stack's adapted layers in shims, add adapters (and a merge layer); returns the stacks."""
    config = model.config
    d = family.hidden_size(config)
    act = family.activation(config)
    out = []
    for name, layers in family.stacks(model).items():
        n = len(layers)
        from ...errors import UserError

        if opts.frozen_bottom >= n:
            raise UserError(f"meft: frozen_bottom={opts.frozen_bottom} leaves no layer of {name} ({n} layers) to adapt")
        n_adapted = n - opts.frozen_bottom
        if opts.reversible > n_adapted:
            raise UserError(f"meft: reversible={opts.reversible} but {name} has {n_adapted} adapted layers")
        if opts.plain_top > n_adapted or (opts.reversible >= 0 and opts.reversible + opts.plain_top > n_adapted):
            raise UserError(f"meft: plain_top={opts.plain_top} and reversible={opts.reversible} do not fit the "
                            f"{n_adapted} adapted layers of {name}")
        shims = []
        for j, i in enumerate(range(opts.frozen_bottom, n)):
            shim = MeftLayer(layers[i], j)
            attach_adapters(shim, family, opts.variant, d, BottleneckShape(opts.r, act, opts.dropout))
            layers[i] = shim
            shims.append(shim)
        stack = MeftStack(name, shims, family, opts, family.causal(name))
        if stack.output == "merge":
            device, dtype = neighbour(shims[-1].layer)
            merge = nn.Linear(2 * d, d, device=device, dtype=dtype)
            with torch.no_grad():
                eye = torch.eye(d, device=device, dtype=dtype)
                a, b = (opts.scale * eye, eye) if stack.plm_stream == 1 else (eye, opts.scale * eye)
                merge.weight.copy_(torch.cat([a, b], dim=1))
                merge.bias.zero_()
            shims[-1].merge = merge
        for s in shims:
            object.__setattr__(s, "_stack", stack)
        out.append(stack)
    return out


def stacks_of(model) -> list[MeftStack]:
    """The MEFT stacks inside a model, bottom to top."""
    seen, out = set(), []
    for m in model.modules():
        if isinstance(m, MeftLayer) and m.__dict__["_stack"] is not None and id(m.__dict__["_stack"]) not in seen:
            seen.add(id(m.__dict__["_stack"]))
            out.append(m.__dict__["_stack"])
    return out


@contextlib.contextmanager
def plain_autograd(model):
    """Run the same MEFT architecture with plain autograd (R = 0) inside this block."""
    stacks = stacks_of(model)
    old = [s.n_reversible for s in stacks]
    for s in stacks:
        s.n_reversible = 0
    try:
        yield
    finally:
        for s, r in zip(stacks, old, strict=True):
            s.n_reversible = r


@contextlib.contextmanager
def pretrained_mode(model):
    """The unmodified pre-trained model: shims call their layer, adapters are off."""
    stacks = stacks_of(model)
    for s in stacks:
        s.set_enabled(False)
    try:
        yield
    finally:
        for s in stacks:
            s.set_enabled(True)


@contextlib.contextmanager
def tracing(model):
    """Record per-layer streams, reconstructions and the stack-input gradient: yields {stack name: dict}."""
    stacks = stacks_of(model)
    traces = {s.name: {} for s in stacks}
    for s in stacks:
        s.trace = traces[s.name]
    try:
        yield traces
    finally:
        for s in stacks:
            s.trace = None
