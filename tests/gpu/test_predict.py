"""Replaying a step's allocation trace: a hand-traced step, phases, host memory, kernel events, OOM."""

from __future__ import annotations

from membench.gpu.allocator import AllocatorConfig
from membench.gpu.predict import AllocationTrace, predict

MiB = 1 << 20
WS = 8_519_680  # the default cuBLAS workspace


def hand_traced() -> AllocationTrace:
    sizes = [4 * MiB, 100, 6 * MiB, 4, 1024]
    events = [(1, 0, "forward"), (1, 1, "forward"),
              (-1, 0, "backward"), (1, 2, "backward"), (-1, 1, "backward"),
              (1, 3, "optimizer"), (1, 4, "optimizer"), (-1, 3, "optimizer")]
    kernel = [(1, WS, "persistent", "cuBLAS workspace", "forward"),
              (4, 2 * MiB, "transient", "attention backward temporary", "backward")]
    return AllocationTrace(prestep=[3 * MiB, 512], sizes=sizes, events=events, host={3}, kernel=kernel)


def test_hand_traced_step():
    # before: a 20 MiB segment (3 MiB used) and a 2 MiB small segment (512 B used)
    # forward: 4 MiB from the 17 MiB rest; the workspace from what is left (split: 4.875 MiB remain); 100 B -> 512
    # backward: the 4 MiB block is freed but 6 MiB fits nowhere: a new 20 MiB segment; the 2 MiB temporary
    #           takes the freed 4 MiB block (split) and goes back
    # optimizer: record 3 lives on the host (skipped); 1 KiB from the small segment
    p = predict(hand_traced(), context_bytes=300 * MiB)
    fwd_peak = 7 * MiB + 1024 + WS
    bwd_end = 9 * MiB + 512 + WS
    assert p["start_allocated_bytes"] == 3 * MiB + 512
    assert p["phases"]["forward"] == {"max_allocated_bytes": fwd_peak, "max_reserved_bytes": 22 * MiB,
                                      "allocated_end_bytes": fwd_peak}
    assert p["phases"]["backward"] == {"max_allocated_bytes": bwd_end + 512 + 2 * MiB,
                                       "max_reserved_bytes": 42 * MiB, "allocated_end_bytes": bwd_end}
    assert p["phases"]["optimizer"] == {"max_allocated_bytes": bwd_end + 1024, "max_reserved_bytes": 42 * MiB,
                                        "allocated_end_bytes": bwd_end + 1024}
    assert p["max_allocated_bytes"] == bwd_end + 512 + 2 * MiB
    assert p["max_reserved_bytes"] == 42 * MiB
    assert p["allocated_after_step_bytes"] == bwd_end + 1024
    assert p["activation_bytes_paper"] == p["max_allocated_bytes"] - p["allocated_after_step_bytes"]
    assert p["cublas_workspace_bytes"] == WS
    assert p["nvidia_smi_bytes"] == 42 * MiB + 300 * MiB and p["oom"] is None


def test_phase_peaks_reset_at_each_start():
    """A phase's peak is measured from its start (reset_peak_memory_stats), so a phase that only frees
    reports what it started with."""
    t = AllocationTrace(prestep=[], sizes=[12 * MiB], events=[(1, 0, "forward"), (-1, 0, "backward")])
    p = predict(t)
    assert p["phases"]["forward"]["max_allocated_bytes"] == 12 * MiB
    assert p["phases"]["backward"] == {"max_allocated_bytes": 12 * MiB, "max_reserved_bytes": 12 * MiB,
                                       "allocated_end_bytes": 0}
    # no optimizer event at all: the phase is still reported, flat
    assert p["phases"]["optimizer"] == {"max_allocated_bytes": 0, "max_reserved_bytes": 12 * MiB,
                                        "allocated_end_bytes": 0}


def test_expandable_segments_change_the_figures():
    t = AllocationTrace(prestep=[], sizes=[3 * MiB, int(16.5 * MiB)], events=[(1, 0, "forward"), (1, 1, "forward")])
    assert predict(t)["max_allocated_bytes"] == 20 * MiB  # the 16.5 MiB request is charged the 17 MiB rest
    p = predict(t, config=AllocatorConfig(expandable_segments=True))
    assert p["max_allocated_bytes"] == int(19.5 * MiB) and p["alloc_conf"] == "expandable_segments:True"


def test_out_of_memory_is_reported_with_its_phase():
    t = AllocationTrace(prestep=[10 * MiB], sizes=[30 * MiB, 30 * MiB],
                        events=[(1, 0, "forward"), (-1, 0, "forward"), (1, 1, "backward")])
    assert predict(t, capacity=50 * MiB)["oom"] is None  # the freed 30 MiB block is reused
    t = AllocationTrace(prestep=[10 * MiB], sizes=[30 * MiB, 30 * MiB],
                        events=[(1, 0, "forward"), (1, 1, "forward"), (-1, 0, "backward")])
    p = predict(t, capacity=50 * MiB)  # both at once: 70 MiB
    assert p["oom"]["phase"] == "forward" and p["oom"]["requested_bytes"] == 30 * MiB


def test_what_stays_after_the_step_is_weights_gradients_and_state():
    """On a real profile: after two steps the allocator holds the weights, buffers, the batch, the
    gradients, AdamW's two moments and the cuBLAS workspaces; the step counters live on the host
    (foreach). Nothing the
    profiler does after the step (dropping the optimizer) is in the figures."""
    from membench import profile
    from membench.backbones.tiny import tiny

    model, ov = tiny("opt", layers=2)
    r = profile(model, "full", batch_size=2, seq_len=16, device="fake", overrides=ov)
    p = r.predicted_cuda
    host_steps = r.optimizer_bytes - 2 * r.trainable_param_bytes  # AdamW: exp_avg + exp_avg_sq, then steps
    assert host_steps > 0 and host_steps % 4 == 0  # one fp32 scalar per trainable tensor
    exact = (r.param_bytes + r.buffer_bytes + r.input_bytes + r.grad_bytes + 2 * r.trainable_param_bytes
             + p["cublas_workspace_bytes"])
    blocks = 3 * (host_steps // 4) + 40  # weights, grads and state of each tensor, buffers and inputs
    assert exact <= p["allocated_after_step_bytes"] <= exact + 511 * blocks
    assert p["activation_bytes_paper"] == p["max_allocated_bytes"] - p["allocated_after_step_bytes"]


# ---- the record: what predict returns, what the backend adds, the JSON it is saved as ---------------------------

PREDICT_KEYS = ["max_allocated_bytes", "max_reserved_bytes", "allocated_after_step_bytes", "start_allocated_bytes",
                "activation_bytes_paper", "cublas_workspace_bytes", "context_bytes", "nvidia_smi_bytes", "segments",
                "alloc_conf", "first_step", "phases", "oom"]
BACKEND_KEYS = ["context_source", "gpu", "sdpa_backends", "kernel_allocations", "paged_bytes", "approximate"]


def test_predict_returns_a_record_that_reads_like_its_json_dict():
    from membench.gpu.predict import PredictedCuda

    p = predict(hand_traced(), context_bytes=300 * MiB)
    assert isinstance(p, PredictedCuda) and list(p.to_dict()) == PREDICT_KEYS + BACKEND_KEYS
    assert p["max_reserved_bytes"] == p.max_reserved_bytes == 42 * MiB and p.get("no such key") is None
    assert p.gpu is None and p.sdpa_backends == {} and p.approximate == ["context_bytes", "nvidia_smi_bytes"]


def test_a_result_saves_the_record_as_todays_dict_and_loads_it_back():
    """RunResult.predicted_cuda is a PredictedCuda; its JSON is the dict of 13 + 5 keys, in that order, and a
    result loads back equal. A result saved before first_step and context_source existed loads too."""
    import json

    from membench import profile
    from membench.backbones.tiny import tiny
    from membench.gpu.predict import PredictedCuda
    from membench.result import RunResult

    model, ov = tiny("bert", layers=1)
    r = profile(model, "lora", batch_size=2, seq_len=8, device="fake", overrides=ov)
    assert isinstance(r.predicted_cuda, PredictedCuda) and r.predicted_cuda.gpu == r.gpu
    saved = json.loads(r.to_json())
    assert list(saved["predicted_cuda"]) == PREDICT_KEYS + BACKEND_KEYS
    assert saved["predicted_cuda"]["max_reserved_bytes"] == r.predicted_cuda["max_reserved_bytes"]
    assert RunResult.from_dict(saved) == r
    old = dict(saved, predicted_cuda={k: v for k, v in saved["predicted_cuda"].items()
                                      if k not in ("first_step", "context_source")})
    p = RunResult.from_dict(old).predicted_cuda
    assert p.context_source == "GPU table (typical, lazy loading)"
    assert p.first_step == {"max_allocated_bytes": p.max_allocated_bytes, "max_reserved_bytes": p.max_reserved_bytes}
