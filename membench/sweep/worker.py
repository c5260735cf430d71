"""One sweep run, in its own process: profile, and turn OOMs and crashes into a record.

    python -m membench.sweep.worker SPEC.json OUT.json [LOG]       (spawn executor)
    child(spec, out_path, log_path)                                 (forkserver executor)
    execute(spec) -> RunRecord                                      (in-process)
    execute_to_dict(spec) -> its dict                               (Ray tasks)

A run's record is a `membench.result.RunRecord`: status ("ok" | "oom" | "failed"), result (RunResult
or None), error (last lines of the traceback), wall_s, provenance; a training run (spec kind "train",
`membench.train.run_training`) adds metrics, series and config. It crosses to the driver's process as
its dict (JSON: RunRecord.to_dict / from_dict).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import traceback
from typing import Any

from ..provenance import provenance
from ..result import RunRecord

ERROR_LINES = 12


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None:
        oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                      getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)) if t)
        if oom_types and isinstance(exc, oom_types):
            return True
    if isinstance(exc, RuntimeError):
        msg = str(exc).lower()
        return "out of memory" in msg or "can't allocate memory" in msg
    return False


def tail(text: str, lines: int = ERROR_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _train(spec: dict[str, Any]) -> RunRecord:
    from ..train import run_training

    return run_training({k: v for k, v in spec.items() if k != "kind"}).record()


def execute(spec: dict[str, Any]) -> RunRecord:
    """Profile (or train) one run in this process; never raises for errors of the run itself."""
    t0 = time.perf_counter()
    try:
        if spec.get("kind") == "train":
            record = _train(spec)
        else:
            from ..runner import profile
            from ..spec import RunSpec

            record = RunRecord(result=profile(RunSpec.from_dict(spec)))
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a record
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        status = "oom" if _is_oom(exc) else "failed"
        from ..errors import UserError

        if isinstance(exc, UserError):
            error = f"UserError: {exc}"
        else:
            error = tail("".join(traceback.format_exception(exc)))
        record = RunRecord(status=status, error=error)
        exc = None  # drop the traceback's frames (and the memory they hold)
    # a profiled run's result carries the provenance record already; a failed one gets it here
    has_provenance = record.result is not None and record.result.provenance
    return dataclasses.replace(record, wall_s=round(time.perf_counter() - t0, 3),
                               provenance={} if has_provenance else provenance(spec.get("device")))


def execute_to_dict(spec: dict[str, Any]) -> dict[str, Any]:
    """execute(spec) as the record's dict: what a Ray task hands back to the driver."""
    return execute(spec).to_dict()


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the parent dies (a killed sweep leaves no orphan runs)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _watch_driver(pid: int | None) -> None:
    """Kill this run when the sweep's driver process dies (a forked run's parent is the forkserver,
    which outlives the driver while any run holds its pipe)."""
    if not pid:
        return
    import signal
    import threading

    def watch() -> None:
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            fd = None
        if fd is not None:
            import select

            select.select([fd], [], [])  # readable once the driver has exited
        else:
            while True:
                time.sleep(0.5)
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                except PermissionError:
                    pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="membench-driver-watch", daemon=True).start()


def _redirect(log_path: str | None) -> None:
    if not log_path:
        return
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def write_record(record: dict[str, Any], out_path: str) -> None:
    """`record` (a RunRecord's dict, or the preflight's) as JSON at `out_path`, atomically."""
    tmp = f"{out_path}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, default=str)
    os.replace(tmp, out_path)


def child(spec: dict[str, Any], out_path: str, log_path: str | None = None, parent_pid: int | None = None,
          driver_pid: int | None = None) -> None:
    """Entry of a forked/spawned run process: run, write the record, exit."""
    _die_with_parent()
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(3)  # the parent died before the death signal was armed
    _watch_driver(driver_pid)
    _redirect(log_path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    write_record(execute(spec).to_dict(), out_path)


def preflight(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check a sweep once, before any run: names, overrides and method options; each run's sequence
    against its model (positions, image size); each model built with each method on `meta` (no memory),
    as the run builds it. One {"message", "field"} per problem (field: the wrong setting,
    ["option" | "override", KEY], or None)."""
    from ..errors import UserError

    def checks(spec):  # (identity, check): each distinct thing is checked once
        if spec.get("kind") == "train":
            yield ["train", spec.get("model"), spec.get("pretrained"), spec["method"], spec.get("overrides"),
                   spec.get("method_options")], _check_train
            return
        model = [spec["model"], spec.get("pretrained"), spec.get("overrides"), spec.get("tiny"), spec.get("attn")]
        yield ["model", *model], _check_model
        yield ["length", *model, spec.get("seq_len"), spec.get("image_size")], _check_length
        yield ["build", *model, spec["method"], spec.get("method_options"), spec.get("dtype")], _check_build

    problems: list[dict[str, Any]] = []
    seen: dict[str, bool] = {}  # identity -> passed
    for spec in specs:
        for ident, check in checks(spec):
            key = json.dumps(ident, sort_keys=True, default=str)
            if key not in seen:
                try:
                    check(spec)
                    seen[key] = True
                except UserError as exc:
                    seen[key] = False
                    if all(p["message"] != str(exc) for p in problems):
                        problems.append({"message": str(exc), "field": list(exc.field) if exc.field else None})
            if not seen[key] and ident[0] == "model":
                break  # the later checks of this run build on its model config: its problem is said once
    return problems


def _check_train(spec: dict[str, Any]) -> None:
    """A training run's model, method and options; the offline packages and paths it needs."""
    from pathlib import Path

    from .. import backbones, methods
    from ..errors import UserError
    from ..train.setup import default_pretrained

    if spec.get("model"):
        backbones.make_config(backbones.get(spec["model"]), dict(spec.get("overrides") or {}),
                              attn=spec.get("attn", "sdpa"))
    elif spec.get("pretrained"):
        if not Path(spec["pretrained"]).is_dir():
            raise UserError(f"train pretrained={spec['pretrained']!r}: no such folder")
    else:
        default_pretrained()
    if spec.get("dataset") and not Path(spec["dataset"]).is_dir():
        raise UserError(f"train dataset={spec['dataset']!r}: no such folder (a datasets save_to_disk folder)")
    family = backbones.get(spec["model"]).family if spec.get("model") else None
    methods.configs(spec["method"], family, spec.get("method_options") or {})


def _config(spec: dict[str, Any]):
    from ..runner import model_config
    from ..spec import RunSpec

    return model_config(RunSpec.from_dict(spec))


def _check_model(spec: dict[str, Any]) -> None:
    _config(spec)


def _check_length(spec: dict[str, Any]) -> None:
    """The run's sequence as `runner.profile` checks it, named by the sweep's own settings."""
    from .. import backbones
    from ..errors import UserError
    from ..runner import sequence_length

    config = _config(spec)
    name = spec.get("model") or spec.get("pretrained")
    try:
        seq_len = sequence_length(config, spec.get("seq_len"), spec.get("image_size"), name, seq_option="--seq-lens",
                                  image_option="--image-sizes")
    except UserError as exc:
        raise UserError(str(exc) if name in str(exc) else f"{name}: {exc}") from None
    limit = backbones.family_for(config.model_type).max_positions(config)
    if seq_len > limit:
        raise UserError(f"--seq-lens {seq_len} is longer than {name}'s {limit} positions")


def _check_build(spec: dict[str, Any]) -> None:
    """Build the model with the run's method on `meta`, as a fake run does: what a method refuses for this
    model (a head it needs, modules it targets) is found here, before any run."""
    from ..errors import UserError
    from ..runner import build
    from ..spec import RunSpec

    try:  # on fake tensors for the CPU kernels, without inputs: the model on `meta`, nothing allocated
        build(RunSpec.from_dict(spec).on_cpu_kernels(), inputs=False)
    except UserError as exc:
        raise UserError(f"{spec['method']} on {spec.get('model') or spec.get('pretrained')}: {exc}",
                        field=exc.field) from None
    except Exception as exc:  # noqa: BLE001 - what a library raises (peft: no module matches the targets) would fail every run
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UserError(f"{spec['method']} on {spec.get('model') or spec.get('pretrained')}: cannot be built: "
                        f"{type(exc).__name__}: {first}") from None


def preflight_child(specs: list[dict[str, Any]], out_path: str) -> None:
    _die_with_parent()
    try:
        problems = preflight(specs)
        write_record({"status": "ok", "problems": problems}, out_path)
    except BaseException as exc:  # noqa: BLE001
        write_record({"status": "failed", "problems": [], "error": tail("".join(traceback.format_exception(exc)))},
                     out_path)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 3 and argv[0] == "preflight":
        with open(argv[1]) as f:
            preflight_child(json.load(f), argv[2])
        return 0
    if len(argv) not in (2, 3):
        print("usage: python -m membench.sweep.worker SPEC.json OUT.json [LOG]", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        spec = json.load(f)
    child(spec, argv[1], argv[2] if len(argv) == 3 else None, parent_pid=os.getppid())
    return 0


if __name__ == "__main__":
    sys.exit(main())
