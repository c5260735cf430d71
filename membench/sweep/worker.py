"""One sweep run, in its own process: profile, and turn OOMs and crashes into a record.

    python -m membench.sweep.worker SPEC.json OUT.json [LOG]       (spawn executor)
    child(spec, out_path, log_path)                                 (forkserver executor)
    execute(spec) -> record                                         (in-process; Ray tasks)

A record is a JSON dict: status ("ok" | "oom" | "failed"), result (RunResult dict
or None), error (last lines of the traceback), wall_s, provenance. A training run
(spec kind "train", `membench.train.run_training`) adds metrics, series and config.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any

from ..provenance import provenance

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


def overrides_for(spec: dict[str, Any]) -> dict[str, Any]:
    overrides = dict(spec.get("overrides") or {})
    if spec.get("tiny"):
        from ..backbones import get
        from ..backbones.tiny import tiny_overrides

        overrides = {**tiny_overrides(get(spec["model"]).family.name), **overrides}
    return overrides


def _train(spec: dict[str, Any]) -> dict[str, Any]:
    from ..train import run_training

    outcome = run_training({k: v for k, v in spec.items() if k != "kind"})
    return {"status": "ok", "result": outcome.result.to_dict() if outcome.result is not None else None,
            "error": None, "metrics": outcome.metrics, "series": {k: [list(p) for p in v]
                                                                  for k, v in outcome.series.items()},
            "config": outcome.config}


def execute(spec: dict[str, Any]) -> dict[str, Any]:
    """Profile (or train) one run in this process; never raises for errors of the run itself."""
    t0 = time.perf_counter()
    try:
        if spec.get("kind") == "train":
            record = _train(spec)
        else:
            from ..runner import profile

            result = profile(spec["model"], spec["method"], batch_size=spec["batch_size"], seq_len=spec["seq_len"],
                             dtype=spec["dtype"], device=spec["device"], attn=spec.get("attn", "sdpa"),
                             overrides=overrides_for(spec), method_options=spec.get("method_options") or None,
                             pretrained=spec.get("pretrained"), seed=spec.get("seed", 0), target=spec.get("target"),
                             gpu=spec.get("gpu"), optimizer=spec.get("optimizer") or "adamw",
                             alloc_conf=spec.get("alloc_conf"))
            record = {"status": "ok", "result": result.to_dict(), "error": None}
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a record
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        status = "oom" if _is_oom(exc) else "failed"
        from ..errors import UserError

        if isinstance(exc, UserError):
            error = f"UserError: {exc}"
        else:
            error = tail("".join(traceback.format_exception(exc)))
        record = {"status": status, "result": None, "error": error}
        exc = None  # drop the traceback's frames (and the memory they hold)
    record["wall_s"] = round(time.perf_counter() - t0, 3)
    # a profiled run's result carries the provenance record already; a failed one gets it here
    record["provenance"] = {} if (record.get("result") or {}).get("provenance") else provenance(spec.get("device"))
    return record


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
    write_record(execute(spec), out_path)


def preflight(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check names, overrides and method options of a sweep once, before any run: one
    {"message", "field"} per problem (field: the wrong setting, ["option" | "override", KEY], or None)."""
    from .. import backbones
    from ..errors import UserError

    def check_model(s):
        backbones.make_config(None if s.get("pretrained") else backbones.get(s["model"]), overrides_for(s),
                              attn=s.get("attn", "sdpa"), pretrained=s.get("pretrained"))

    def checks(spec):  # (identity, check): each distinct thing is checked once
        if spec.get("kind") == "train":
            yield ["train", spec.get("model"), spec.get("pretrained"), spec["method"], spec.get("overrides"),
                   spec.get("method_options")], _check_train
            return
        for what, check in (("model", check_model), ("method", _check_method)):
            yield [what, spec["model"], spec["method"], spec.get("overrides"), spec.get("method_options"),
                   spec.get("tiny")], check

    problems: list[dict[str, Any]] = []
    seen: set[str] = set()
    for spec in specs:
        for ident, check in checks(spec):
            key = json.dumps(ident, sort_keys=True, default=str)
            if key in seen:
                continue
            seen.add(key)
            try:
                check(spec)
            except UserError as exc:
                if all(p["message"] != str(exc) for p in problems):
                    problems.append({"message": str(exc), "field": list(exc.field) if exc.field else None})
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


def _check_method(spec: dict[str, Any]) -> None:
    from .. import backbones, methods

    family = backbones.get(spec["model"]).family if not spec.get("pretrained") else None
    methods.configs(spec["method"], family, spec.get("method_options") or {})


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
