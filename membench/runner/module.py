"""What profile_module takes: any nn.Module and a batch you give, checked; the rows of its report."""

from __future__ import annotations

from .. import backbones
from ..errors import UserError


def check_module_call(module, batch, backend) -> None:
    """What profile_module is given, checked before the step: an nn.Module, a batch with a tensor in it,
    and every tensor (parameters, buffers, inputs) of the kind the backend runs: fake, CPU or CUDA."""
    from torch import nn

    if isinstance(module, str):
        call = (f"membench.profile({module!r}, method, ...)" if module in backbones.names() else
                "membench.profile(NAME, method, ...) with a NAME from `membench list`")
        raise UserError(f"profile_module takes an nn.Module you built, not a name ({module!r}); for a registered "
                        f"model use {call}")
    if not isinstance(module, nn.Module):
        raise UserError(f"profile_module takes a torch.nn.Module, got {type(module).__name__}")
    inputs = input_tensors(batch)
    if not inputs:
        raise UserError(f"batch: got {type(batch).__name__}; give the module's inputs as a dict (module(**batch)), "
                        "a tuple or list (module(*batch)) or one tensor, with at least one tensor in it")
    if not any(p.requires_grad for p in module.parameters()):
        raise UserError("the module has no trainable parameter (requires_grad): nothing to fine-tune")
    weights = [*module.parameters(), *module.buffers()]
    backend.check_tensors((("the module's parameters are", weights), ("the batch's tensors are", inputs)))


def input_tensors(batch) -> list:
    import torch

    if isinstance(batch, torch.Tensor):
        return [batch]
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, tuple | list) else []
    return [t for t in values if isinstance(t, torch.Tensor)]


def auto_groups(module) -> tuple[dict, list[str] | None]:
    from torch import nn

    lists = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    groups, order = {}, []
    for n, m in module.named_modules():
        groups[m] = n.split(".")[0] if n else "outside"
        if n and groups[m] not in order:
            order.append(groups[m])
    if lists:
        lname, big = max(lists, key=lambda item: len(item[1]))
        short = lname.split(".")[-1]
        for i, layer in enumerate(big):
            for m in layer.modules():
                groups[m] = f"{short}.{i}"
        top = lname.split(".")[0]
        groups[big] = f"{short}.0"  # the list container never runs forward itself
        pos = order.index(top) if top in order else len(order)
        order[pos:pos] = [f"{short}.{i}" for i in range(len(big))]
        if top not in groups.values():  # the list was top-level: all of it is in the rows now
            order.remove(top)
    return groups, order + ["outside"]


def batch_shape(batch) -> tuple[int, int | None, list[int]]:
    """(batch size, sequence length or None, shape) of a batch's first input tensor.

    The sequence length is the second axis only where the input has one: token ids (an integer
    tensor [b, s]) or hidden states ([b, s, d] floats). Anything else ([b, d] features, [b, c, h, w]
    images) has no sequence: None, and its shape tells what it is."""
    import torch

    vals = batch.values() if isinstance(batch, dict) else (batch if isinstance(batch, tuple | list) else [batch])
    for t in vals:
        if isinstance(t, torch.Tensor) and t.dim() >= 1:
            shape = [int(n) for n in t.shape]
            ids = not (t.is_floating_point() or t.is_complex())
            sequence = (ids and t.dim() == 2) or (not ids and t.dim() == 3)
            return shape[0], shape[1] if sequence else None, shape
    return 0, None, []
