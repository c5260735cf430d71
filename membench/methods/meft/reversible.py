"""The one autograd.Function that runs a reversible MEFT stack, for every backbone.

One layer n (meft-notes section 2), streams h1, h2 of width d:

    x1 ──(*lam)──(+)──────────── y1 ──────────────┐            swap (MEFT1/2):
               F(x2)↑                              │            output (y2, y1)
    x2 ──┬───────┘       (*beta)──(+)──── y2       │
         └────────────────────┘   ↑G(y1)───────────┘

Forward  y1 = lam*x1 + F(x2);   y2 = beta*x2 + G(y1)   (no graph; only the final
         two streams are saved, plus optional exact checkpoints every k layers)
Inverse  # x2 = (y2 - G(y1)) / beta
         # x1 = (y1 - F(x2)) / lam
Backward, from the top layer down (meft-notes section 3), given dy1, dy2:
    g  = G(y1) recomputed with grad;   J_G^T dy2 and G's parameter grads
    x2 = (y2 - g) / beta;               dy1' = dy1 + J_G^T dy2
    f  = F(x2) recomputed with grad;   J_F^T dy1' and F's parameter grads
    x1 = (y1 - f) / lam;                dx1 = lam*dy1';   dx2 = beta*dy2 + J_F^T dy1'
Both streams start as the stack input h, so dh = dx1 + dx2 at the bottom.

In place, so that a layer's backward holds four stream tensors and one recompute: x2 is written
over y2 and x1 over y1 as soon as G(y1) and F(x2) are recomputed (the recomputed output is then
freed before its backward: autograd.grad starts from its GradientEdge), dy1' over dy1 and dx2
over dy2. The top y1, y2 are this Function's forward outputs (kept by save_for_backward): their
storage carries the streams all the way down, so after backward they hold the stack input, and
a second backward (retain_graph) is refused. Gradients autograd hands in are never written:
`run_stack` puts `FreshGradients` after the Function, whose backward hands it private copies
(and lets autograd free its own before the stack's backward runs).
With `ffn_chunks` = k the token-wise tail of F or G (the FFN block, the adapters) is
recomputed and back-propagated over k chunks of the sequence (`recompute_in_chunks`).

What makes the recompute equal to the forward (meft-notes section 4):
- RNG: the CPU (and CUDA) generator state is captured before F and before G of
  every layer and restored inside `torch.random.fork_rng` for the recompute, so
  dropout masks match and the global RNG is left as plain autograd leaves it.
- autocast: the forward's autocast state is re-entered in backward.
- per-call inputs (masks, position ids, rotary embeddings, encoder states) are
  replayed as the same tensors; those that require grad (BART's encoder output
  in the decoder) are Function inputs and get their gradients.
- the trainable parameters are Function inputs, so backward runs even when the
  stack input does not require grad (frozen embeddings), and their gradients
  are returned from backward.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ...backbones.residual import residual_sink
from .coupling import SEQ_DIM, Coupling


def _rng_state(device: torch.device):
    cpu = torch.get_rng_state()
    dev = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return cpu, dev


def _set_rng_state(state, device: torch.device) -> None:
    cpu, dev = state
    torch.set_rng_state(cpu)
    if dev is not None:
        torch.cuda.set_rng_state(dev, device)


def autocast_state(device_type: str):
    if device_type not in ("cpu", "cuda"):
        return None
    return (torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type),
            torch.is_autocast_cache_enabled())


def autocast_context(device_type: str, state):
    if state is None:
        return contextlib.nullcontext()
    enabled, dtype, cache = state
    return torch.autocast(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache)


def _unscale(diff: torch.Tensor, scale: float) -> torch.Tensor:
    """diff / scale, in place on the fresh difference (no extra temporary)."""
    return diff if scale == 1.0 else diff.div_(scale)


class StackCall:
    """Everything one call of the reversible stack needs: couplings, per-call inputs, parameters."""

    def __init__(self, couplings, args, kwargs, compute_dtype, stream_dtype, checkpoint_every=0,
                 restore_rng=True, trace=None):
        from torch.utils._pytree import tree_flatten

        self.couplings = couplings
        self.compute_dtype, self.stream_dtype = compute_dtype, stream_dtype
        self.checkpoint_every = checkpoint_every
        self.restore_rng = restore_rng
        self.trace = trace
        leaves, self.spec = tree_flatten((tuple(args), dict(kwargs)))
        self.leaves = leaves
        self.tensor_pos = [i for i, v in enumerate(leaves) if isinstance(v, torch.Tensor)]
        self.grad_pos = [i for i in self.tensor_pos if leaves[i].requires_grad]
        self.params = [c.params() for c in couplings]
        self.handed: tuple = ()  # gradients FreshGradients made for this call's backward

    def grad_inputs(self) -> list[torch.Tensor]:
        return [self.leaves[i] for i in self.grad_pos]

    def flat_params(self) -> list[torch.Tensor]:
        return [p for ps in self.params for p in ps]

    def rebuild(self, tensors: list[torch.Tensor], replace: dict[int, torch.Tensor]):
        from torch.utils._pytree import tree_unflatten

        leaves = list(self.leaves)
        for i, t in zip(self.tensor_pos, tensors, strict=True):
            leaves[i] = replace.get(i, t)
        args, kwargs = tree_unflatten(leaves, self.spec)
        return args, kwargs


class Saved:
    """The saved-tensor layout of a ReversibleStack call:

        [y1, y2 (the top layer's outputs), x1_k, x2_k for each checkpointed layer k, context tensors...]
    """

    @staticmethod
    def pack(top, checkpoints: list[tuple], context: list) -> tuple:
        return (*top, *[t for pair in checkpoints for t in pair], *context)

    @staticmethod
    def unpack(saved, checkpointed: list[int]):
        """(top (y1, y2), {layer: (x1, x2)} of the checkpoints, the context tensors)."""
        n = 2 * len(checkpointed)
        pairs = saved[2:2 + n]
        return (saved[0], saved[1]), {i: (pairs[2 * j], pairs[2 * j + 1]) for j, i in enumerate(checkpointed)}, \
            list(saved[2 + n:])


class ReversibleStack(torch.autograd.Function):
    """apply(call, h, *grad_context_tensors, *trainable_params) -> (y1, y2) of the top reversible layer."""

    @staticmethod
    def forward(ctx, call: StackCall, h: torch.Tensor, *inputs: torch.Tensor):
        device = h.device
        args, kwargs = call.rebuild([call.leaves[i] for i in call.tensor_pos], {})
        x1 = x2 = h.to(call.stream_dtype)
        states, ckpt_idx, ckpts = [], [], []
        k = call.checkpoint_every
        for i, c in enumerate(call.couplings):
            if k and i % k == 0:
                ckpt_idx.append(i)
                ckpts.append((x1, x2))
            s_f = _rng_state(device)
            y1 = c.lam * x1 + c.F(x2, args, kwargs, call.compute_dtype)
            s_g = _rng_state(device)
            y2 = c.beta * x2 + c.G(y1, args, kwargs, call.compute_dtype)
            states.append((s_f, s_g))
            x1, x2 = (y2, y1) if c.swap else (y1, y2)
        ctx.call, ctx.states, ctx.ckpt_idx = call, states, ckpt_idx
        ctx.device, ctx.h_dtype = device, h.dtype
        ctx.autocast = autocast_state(device.type)
        ctx.save_for_backward(*Saved.pack((x1, x2), ckpts, [call.leaves[i] for i in call.tensor_pos]))
        return x1, x2

    @staticmethod
    def backward(ctx, dy1, dy2):
        if getattr(ctx, "ran_backward", False):
            raise RuntimeError("backward ran twice through a reversible MEFT stack (retain_graph=True): its backward "
                               "reconstructs the streams in place, over the forward's outputs; run forward again")
        ctx.ran_backward = True
        (y1, y2), ckpts, context = Saved.unpack(ctx.saved_tensors, ctx.ckpt_idx)
        run = _Backward(ctx, ckpts, context)
        # The top outputs are this Function's own (fresh in forward): their storage carries the streams down
        # the stack. Gradients are overwritten only if FreshGradients made them for this call; any other
        # gradient autograd hands in (dy1 may even be dy2) is copied before the first write.
        fresh, run.call.handed = run.call.handed, ()
        streams = [y1.detach(), y2.detach(), _Grad(dy1, y1, any(dy1 is t for t in fresh)),
                   _Grad(dy2, y2, any(dy2 is t for t in fresh))]
        del y1, y2, dy1, dy2, fresh  # `streams` holds the only references (layer_backward frees them as it goes)
        for i in reversed(range(len(run.call.couplings))):  # top layer first; each one's inputs feed the next
            streams = run.layer_backward(i, streams)
        _x1, _x2, dx1, dx2 = streams
        dh = (dx1.value() + dx2.value()).to(ctx.h_dtype) if run.need_dh else None  # both streams start as h
        return (None, dh, *run.ctx_grads, *[g for gs in run.param_grads for g in gs])


class FreshGradients(torch.autograd.Function):
    """Identity on a ReversibleStack's outputs (x1, x2), in their graph right after it. Its backward
    copies their gradients and hands the copies to the stack's backward (`StackCall.handed`): no other
    node has seen them, so the reversible backward may overwrite them, and autograd frees its own
    before that long backward runs (it would otherwise hold them through it: one more hidden state)."""

    @staticmethod
    def forward(ctx, call: StackCall, x1: torch.Tensor, x2: torch.Tensor):
        ctx.call = call
        return x1.view_as(x1), x2.view_as(x2)

    @staticmethod
    def backward(ctx, d1, d2):
        fresh = tuple(None if d is None else d.clone() for d in (d1, d2))
        ctx.call.handed = tuple(d for d in fresh if d is not None)
        return (None, *fresh)


def run_stack(call: StackCall, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The top two streams of the reversible stack `call` over the stack input h."""
    x1, x2 = ReversibleStack.apply(call, h, *call.grad_inputs(), *call.flat_params())
    return FreshGradients.apply(call, x1, x2)


def _sum_grads(total: list, grads) -> list:
    return [a if b is None else (b if a is None else a + b) for a, b in zip(total, grads, strict=True)]


def _seq_view(t: torch.Tensor, start: int | None, like: torch.Tensor) -> torch.Tensor:
    """t itself, or the part of its sequence that the chunk `like` starting at `start` covers."""
    return t if start is None else t.narrow(SEQ_DIM, start, like.shape[SEQ_DIM])


class _Grad:
    """The gradient of one stream while a backward carries it down the stack, updated in place.

    A gradient autograd handed in (or that is still shared) is copied on the first write: only
    tensors this backward created are overwritten. `scale(s)` is applied lazily, at that write."""

    def __init__(self, t: torch.Tensor | None, like: torch.Tensor, mine: bool = False):
        self.t, self.mine, self.pending = (torch.zeros_like(like), True, 1.0) if t is None else (t, mine, 1.0)

    def scale(self, s: float) -> _Grad:
        """t *= s  (dx1 = lam * dy1', dx2 = beta * dy2 + ...)"""
        if s != 1.0:
            if self.mine:
                self.t.mul_(s)
            else:
                self.pending *= s
        return self

    def _own(self) -> None:
        if not self.mine:
            self.t = self.t * self.pending if self.pending != 1.0 else self.t.clone()
            self.mine, self.pending = True, 1.0

    def add(self, g: torch.Tensor | None, start: int | None = None) -> None:
        """t += g, or t[chunk] += g for the sequence chunk g that starts at `start`."""
        if g is None:
            return
        if start is None and not self.mine and self.pending == 1.0:
            self.t, self.mine = self.t + g, True  # one new tensor rather than a copy and an add
            return
        self._own()
        _seq_view(self.t, start, g).add_(g)

    def value(self) -> torch.Tensor:
        if self.pending != 1.0:
            self._own()
        return self.t


class _Inverse:
    """x = (y - out) / scale, written over y as soon as the recompute has produced out (before its backward,
    so that out is not kept through it). y is a stream this backward owns (see ReversibleStack.backward)."""

    def __init__(self, y: torch.Tensor, scale: float):
        self.y, self.scale = y, scale

    def __call__(self, out: torch.Tensor, start: int | None = None) -> None:
        _unscale(_seq_view(self.y, start, out).sub_(out), self.scale)


# torch >= 2.5 takes a GradientEdge as the output of autograd.grad: a recompute's output is then freed
# before its backward runs (older torch keeps it through the backward: one more tensor at the peak)
_EDGE_ROOTS = hasattr(torch.autograd.graph, "get_gradient_edge") and torch.__version__ >= "2.5"


def _grad(root: list, wrt: list, dy: torch.Tensor, start: int | None = None):
    """torch.autograd.grad of root[0] (taken out of the list: this frame holds the last reference) with
    gradient dy (or its chunk at `start`)."""
    out = root.pop()
    if not out.requires_grad:
        return (None,) * len(wrt)
    dy = (dy if start is None else _seq_view(dy, start, out).contiguous()).to(out.dtype)
    if _EDGE_ROOTS:
        out = torch.autograd.graph.get_gradient_edge(out)
    return torch.autograd.grad(out, wrt, dy, allow_unused=True)


@dataclass(frozen=True)
class _Part:
    """What one recompute runs: F or G of one layer, with the RNG state it ran from in forward."""

    coupling: Coupling
    which: str  # "F" or "G"
    layer: int  # its index in the stack (its parameters: StackCall.params[layer])
    rng: tuple  # _rng_state before it ran


class _Backward:
    """One backward call of a ReversibleStack: recomputes F and G layer by layer (module docstring) and
    collects the gradients of the per-call inputs (`ctx_grads`) and of each layer's parameters."""

    def __init__(self, ctx, ckpts: dict, context: list):
        call: StackCall = ctx.call
        self.call, self.states, self.ckpts = call, ctx.states, ckpts
        self.device, self.autocast, self.trace = ctx.device, ctx.autocast, call.trace
        self.need_dh = ctx.needs_input_grad[1] or self.trace is not None
        # per-call inputs that require grad: detached leaves whose grads we collect
        detached = {i: context[call.tensor_pos.index(i)].detach().requires_grad_() for i in call.grad_pos}
        self.args, self.kwargs = call.rebuild(context, detached)
        self.ctx_in = [detached[i] for i in call.grad_pos]
        self.ctx_grads: list[torch.Tensor | None] = [None] * len(self.ctx_in)
        self.param_grads: list[list[torch.Tensor | None]] = [[None] * len(ps) for ps in call.params]

    def layer_backward(self, i: int, streams: list) -> list:
        """Layer i's inputs and their gradients [x1, x2, dx1, dx2] from its outputs and theirs
        [y1, y2, dy1, dy2] (the gradients as `_Grad`s). `streams` is emptied: this frame holds the only
        references. In place, so that a layer's backward holds four stream tensors, plus what F or G
        recomputes: x2 is written over y2, x1 over y1, dy1' over dy1 and dx2 over dy2."""
        y1, y2, dy1, dy2 = streams
        streams.clear()
        c = self.call.couplings[i]
        if c.swap:  # the layer's outputs went out as (y2, y1)
            y1, y2, dy1, dy2 = y2, y1, dy2, dy1
        s_f, s_g = self.states[i]
        ckpt = self.ckpts.get(i)
        # g = G(y1) recomputed;  x2 = (y2 - g) / beta over y2;  dy1' = dy1 + J_G^T dy2 into dy1
        x2 = y2 if ckpt is None else ckpt[1]
        self.recompute(_Part(c, "G", i, s_g), y1, dy2.value(), None if ckpt else _Inverse(y2, c.beta), dy1)
        del y2
        # f = F(x2) recomputed;  x1 = (y1 - f) / lam over y1;  dx2 = beta * dy2 + J_F^T dy1' into dy2
        x1 = y1 if ckpt is None else ckpt[0]
        need_x = i > 0 or self.need_dh  # the bottom F's dx is only needed for dh
        self.recompute(_Part(c, "F", i, s_f), x2, dy1.value(), None if ckpt else _Inverse(y1, c.lam),
                       dy2.scale(c.beta) if need_x else None)
        del y1
        dx1, dx2 = dy1.scale(c.lam), dy2  # dx1 = lam * dy1'
        if self.trace is not None:
            self.trace.setdefault("recon", {})[i] = (x1.detach().clone(), x2.detach().clone())
        return [x1, x2, dx1, dx2]

    def accumulate(self, grads, layer: int) -> None:
        """Add (*context grads, *param grads) of one recompute to the totals."""
        n = len(self.ctx_in)
        self.ctx_grads = _sum_grads(self.ctx_grads, grads[:n])
        self.param_grads[layer] = _sum_grads(self.param_grads[layer], grads[n:])

    @contextlib.contextmanager
    def replaying(self, state):
        """The forward's RNG state (dropout masks) around a recompute; the global RNG is left as it was."""
        device = self.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type):
            if self.call.restore_rng:
                _set_rng_state(state, device)
            yield

    def forward_mode(self):
        """Grad on, and the forward's autocast (backward itself runs outside autocast, as with AMP)."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.enable_grad())
        stack.enter_context(autocast_context(self.device.type, self.autocast))
        return stack

    @staticmethod
    def routing(x, dx, start=None):
        """The block's residual gradient goes straight into dx (backbones/residual.py): it is not held in
        x's input buffer through the rest of the block's backward."""
        if x is None or dx is None:
            return contextlib.nullcontext()
        return residual_sink(x, lambda g: dx.add(g, start))

    def _call(self, fn, x):
        return fn(x, self.args, self.kwargs, self.call.compute_dtype)

    def recompute(self, part: _Part, x, dy, inverse=None, dx=None):
        """F or G of one layer (`part`) again, with grad, and its backward with gradient dy: the parameter
        and context gradients are accumulated, J^T dy is added into `dx` (a `_Grad`; None: nobody needs it),
        and `inverse` gets the recomputed output before the backward runs.

        dx=None: x is then not a graph input, so autograd neither records nor back-propagates the
        part of fn that only leads to x (e.g. MEFT1's attention below the FFN adapter)."""
        c, which, params = part.coupling, part.which, self.call.params[part.layer]
        if c.chunked(which):
            return self.recompute_in_chunks(part, x, dy, inverse, dx)
        xd = x.detach().requires_grad_() if dx is not None else x.detach()
        with self.replaying(part.rng), self.forward_mode(), self.routing(xd, dx):
            out = [self._call(getattr(c, which), xd)]
        if inverse is not None:
            inverse(out[0].detach())
        self.accumulate(self._backprop(out, xd, dx, dy, params), part.layer)

    def recompute_in_chunks(self, part: _Part, x, dy, inverse, dx):
        """The same with F/G = tail(head(x)), the token-wise tail over chunks of the sequence:

            z = head(x)  (graph kept);   per chunk j:  out_j = tail(z_j),  dz_j = J_tail^T dy_j
            then back through the head with dz (without a head, dz is dx: added chunk by chunk).
        Dropout draws in forward's order (head, then chunk by chunk), so the masks replay."""
        c, params = part.coupling, self.call.params[part.layer]
        head, tail = c.head(part.which), c.tail(part.which)
        xd = x.detach().requires_grad_() if dx is not None else x.detach()
        total: list = [None] * (len(self.ctx_in) + len(params))
        with self.replaying(part.rng):
            with self.forward_mode(), self.routing(xd, dx):
                z = [self._call(head, xd) if head is not None else xd]
            # J_tail^T dy, chunk by chunk: dx itself without a head, else the head output's gradient
            dz = dx if head is None else (_Grad(None, z[0]) if dx is not None or z[0].requires_grad else None)
            start = 0
            for zc in c.split(z[0].detach()):
                zc = zc.detach().requires_grad_() if dz is not None else zc
                with self.forward_mode(), self.routing(zc, dz, start):
                    out = [self._call(tail, zc)]
                if inverse is not None:
                    inverse(out[0].detach(), start)
                total = _sum_grads(total, self._backprop(out, zc, dz, dy, params, start))
                start += zc.shape[SEQ_DIM]
                del zc
        if head is not None and dz is not None:
            total = _sum_grads(total, self._backprop(z, xd, dx, dz.t, params))
            del dz
        self.accumulate(total, part.layer)

    def _backprop(self, root: list, x, dx, dy, params, start=None) -> tuple:
        """Backward of root[0] (see _grad) with gradient dy, or its chunk at `start`: J^T dy is added into
        dx (a `_Grad`, at the same chunk; None: x is no graph input); returns (*context, *param grads)."""
        if dx is None:
            return _grad(root, [*self.ctx_in, *params], dy, start)
        grads = _grad(root, [x, *self.ctx_in, *params], dy, start)
        dx.add(grads[0], start)
        return grads[1:]
