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

import torch


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
        (y1, y2), ckpts, context = Saved.unpack(ctx.saved_tensors, ctx.ckpt_idx)
        run = _Backward(ctx, ckpts, context)
        streams = [y1, y2, torch.zeros_like(y1) if dy1 is None else dy1, torch.zeros_like(y2) if dy2 is None else dy2]
        del y1, y2, dy1, dy2  # `streams` holds the only references (layer_backward frees them as it goes)
        for i in reversed(range(len(run.call.couplings))):  # top layer first; each one's inputs feed the next
            streams = run.layer_backward(i, streams)
        _x1, _x2, dx1, dx2 = streams
        dh = (dx1 + dx2).to(ctx.h_dtype) if run.need_dh else None  # both streams start as the stack input
        return (None, dh, *run.ctx_grads, *[g for gs in run.param_grads for g in gs])


def _sum_grads(total: list, grads) -> list:
    return [a if b is None else (b if a is None else a + b) for a, b in zip(total, grads, strict=True)]


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
        [y1, y2, dy1, dy2]. `streams` is emptied: this frame holds the only references, so each
        tensor is freed as soon as it is no longer needed."""
        y1, y2, dy1, dy2 = streams
        streams.clear()
        c, params = self.call.couplings[i], self.call.params[i]
        if c.swap:  # the layer's outputs went out as (y2, y1)
            y1, y2, dy1, dy2 = y2, y1, dy2, dy1
        s_f, s_g = self.states[i]
        g, grads = self.recompute(c, "G", y1, s_g, dy2, params)  # g = G(y1), J_G^T dy2
        self.accumulate(grads, i)
        if grads[0] is not None:
            dy1 = dy1 + grads[0]  # dy1' = dy1 + J_G^T dy2
        x2 = self.ckpts[i][1] if i in self.ckpts else _unscale(y2 - g, c.beta)  # x2 = (y2 - G(y1)) / beta
        del g, y2  # y2 is not needed below (F's recompute is the backward's peak)
        f, grads = self.recompute(c, "F", x2, s_f, dy1, params, need_x=i > 0 or self.need_dh)  # f = F(x2)
        self.accumulate(grads, i)
        x1 = self.ckpts[i][0] if i in self.ckpts else _unscale(y1 - f, c.lam)  # x1 = (y1 - F(x2)) / lam
        del f
        dx1 = dy1 if c.lam == 1.0 else c.lam * dy1  # dx1 = lam * dy1'
        if grads[0] is None:
            dx2 = dy2 if c.beta == 1.0 else c.beta * dy2  # dx2 = beta * dy2 (+ J_F^T dy1': none needed)
        else:
            dx2 = torch.add(grads[0], dy2, alpha=c.beta)  # dx2 = beta * dy2 + J_F^T dy1'
        if self.trace is not None:
            self.trace.setdefault("recon", {})[i] = (x1.detach().clone(), x2.detach().clone())
        return [x1, x2, dx1, dx2]

    def accumulate(self, grads, layer: int) -> None:
        """Add (dx, *context grads, *param grads) of one recompute to the totals (dx is the caller's)."""
        n = len(self.ctx_in)
        self.ctx_grads = _sum_grads(self.ctx_grads, grads[1:1 + n])
        self.param_grads[layer] = _sum_grads(self.param_grads[layer], grads[1 + n:])

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
    def grads_of(out, wrt, dy):
        if not out.requires_grad:
            return (None,) * len(wrt)
        return torch.autograd.grad(out, wrt, dy.to(out.dtype), allow_unused=True)

    def _call(self, fn, x):
        return fn(x, self.args, self.kwargs, self.call.compute_dtype)

    def recompute(self, c, which, x, state, dy, params, need_x=True):
        """F or G of coupling c again, with grad: (its output, (dx, *context grads, *param grads)).

        need_x=False: nobody needs the gradient w.r.t. x (the bottom F when the stack input does not
        require grad); x is then not a graph input, so autograd neither records nor back-propagates
        the part of fn that only leads to x (e.g. MEFT1's attention below the FFN adapter)."""
        if c.chunked(which):
            return self.recompute_in_chunks(c, which, x, state, dy, params, need_x)
        xd = x.detach().requires_grad_() if need_x else x.detach()
        with self.replaying(state), self.forward_mode():
            out = self._call(getattr(c, which), xd)
        grads = self.grads_of(out, [xd, *self.ctx_in, *params] if need_x else [*self.ctx_in, *params], dy)
        return out.detach(), grads if need_x else (None, *grads)

    def recompute_in_chunks(self, c, which, x, state, dy, params, need_x):
        """The same with F/G = tail(head(x)), the token-wise tail over chunks of the sequence:

            z = head(x)  (graph kept);   per chunk j:  out_j = tail(z_j),  dz_j = J_tail^T dy_j
            then back through the head with dz = cat(dz_j).
        Dropout draws in forward's order (head, then chunk by chunk), so the masks replay."""
        head, tail = c.head(which), c.tail(which)
        xd = x.detach().requires_grad_() if need_x else x.detach()
        total: list = [None] * (len(self.ctx_in) + len(params))
        outs, dzs = [], []
        with self.replaying(state):
            with self.forward_mode():
                z = self._call(head, xd) if head is not None else xd
            need_z = need_x or (head is not None and z.requires_grad)
            for zc, dyc in zip(c.split(z.detach()), c.split(dy), strict=True):
                zc = zc.detach().requires_grad_() if need_z else zc
                with self.forward_mode():
                    out = self._call(tail, zc)
                grads = self.grads_of(out, [zc, *self.ctx_in, *params] if need_z else [*self.ctx_in, *params], dyc)
                if need_z:
                    dzs.append(grads[0] if grads[0] is not None else torch.zeros_like(zc))
                    grads = grads[1:]
                total = _sum_grads(total, grads)
                outs.append(out.detach())
                del out, grads
        dz = torch.cat(dzs, dim=-2) if need_z else None
        dx = None
        if head is not None and dz is not None:
            grads = self.grads_of(z, [xd, *self.ctx_in, *params] if need_x else [*self.ctx_in, *params], dz)
            dx, grads = (grads[0], grads[1:]) if need_x else (None, grads)
            total = _sum_grads(total, grads)
        elif need_x:
            dx = dz
        return torch.cat(outs, dim=-2), (dx, *total)
