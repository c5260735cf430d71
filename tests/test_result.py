"""membench.result: the one rule that names a run's model."""

import pytest

from membench.result import LayerRow, RunResult, model_name


def test_model_name_rule(tmp_path):
    assert model_name("opt-125m", "/ckpt/x") == "opt-125m"  # a named model wins
    assert model_name(None, str(tmp_path / "sst2")) == "sst2"
    assert model_name(None, str(tmp_path / "sst2" / "final")) == "sst2"  # generic folder names: the parent's
    assert model_name(None, str(tmp_path / "sst2" / "checkpoint") + "/") == "sst2"
    assert model_name(None, None, "all-MiniLM-L6-v2") == "all-MiniLM-L6-v2"
    with pytest.raises(ValueError):
        model_name(None, None)


# ---- RunRecord: a run as the results database stores it, and the dict it crosses processes as -------------------


def _result() -> RunResult:
    return RunResult(model="opt-125m", method="lora", batch_size=2, seq_len=16, dtype="bf16", device="fake",
                     activation_bytes=1, peak_activation_bytes=2, param_bytes=3, trainable_param_bytes=4,
                     grad_bytes=4, optimizer_bytes=8, layers=[LayerRow("layers.0", 1)], provenance={"torch": "x"})


def test_a_record_crosses_processes_as_json_and_comes_back_equal():
    import json

    from membench.result import RunRecord

    record = RunRecord(status="ok", result=_result(), wall_s=1.5, provenance={"pid": 7}, kind="train",
                       config={"task": "sst2"}, metrics={"accuracy": 0.5}, series={"loss": [[0, 1.0], [1, 0.5]]})
    wire = json.loads(json.dumps(record.to_dict()))
    assert wire["result"] == _result().to_dict() and wire["status"] == "ok"
    assert RunRecord.from_dict(wire) == record


def test_a_short_third_party_record_loads_with_defaults_and_without_a_status_is_failed():
    from membench.result import RunRecord

    r = RunRecord.from_dict({"status": "oom", "result": None, "error": "OutOfMemoryError", "wall_s": 2.0})
    assert (r.status, r.result, r.error, r.wall_s, r.kind, r.provenance, r.config) == (
        "oom", None, "OutOfMemoryError", 2.0, "memory", {}, None)
    assert RunRecord.from_dict({"result": _result().to_dict(), "provenance": None}).status == "failed"
