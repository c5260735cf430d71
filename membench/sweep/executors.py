"""Where runs execute. An executor takes run specs and hands back records as runs finish.

    local (default)  each run in its own local process: forked from a preloaded
                     forkserver (fast) or spawned as `python -m membench.sweep.worker`
    ray              each run is a Ray task (one GPU for cuda, one CPU otherwise) on
                     an existing cluster (`--ray-address`) or a local instance

Interface (a third-party executor is `--executor package.module:Class`):

    ex.start(specs)            once, before any run
    ex.slots                   how many runs may be in flight
    ex.submit(spec, timeout)   start one run
    ex.poll(wait_s)            -> [(spec, record)] of runs that finished
    ex.close()                 stop everything still running

Records: `membench.result.RunRecord` (status ok|oom|failed|timeout, result, error, wall_s, provenance),
carried from a run's process as its dict (RunRecord.to_dict / from_dict); a third-party executor may
hand back that dict itself. The driver alone writes the database.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..backends import needs_gpu
from ..errors import UserError
from ..result import RunRecord
from .spec import RunSpec

EXECUTORS = ("local", "ray")
START_METHODS = ("forkserver", "spawn")


def _tail_file(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (the kernel's out-of-memory killer sends SIGKILL)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}"


class Executor:
    name = "base"
    slots = 1

    def start(self, specs: list[RunSpec]) -> None:
        pass

    def preflight(self, specs: list[RunSpec]) -> list:
        """Problems with the sweep's names and options, found before any run: each a line, or a
        {"message", "field"} record naming the setting that was wrong."""
        return []

    def submit(self, spec: RunSpec, timeout: float | None) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def poll(self, wait_s: float = 0.1) -> list[tuple[RunSpec, RunRecord]]:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        pass


class _Proc:
    """One running local run: a multiprocessing Process or a Popen, with its files."""

    def __init__(self, spec: RunSpec, timeout: float | None, handle, out: Path, log: Path):
        self.spec, self.timeout, self.handle, self.out, self.log = spec, timeout, handle, out, log
        self.t0 = time.monotonic()

    def exitcode(self) -> int | None:
        h = self.handle
        return h.poll() if isinstance(h, subprocess.Popen) else h.exitcode

    def kill(self) -> None:
        h = self.handle
        with contextlib.suppress(OSError, ValueError):
            h.kill()
        if isinstance(h, subprocess.Popen):
            h.wait()
        else:
            h.join(10)

    def reap(self) -> None:
        h = self.handle
        if isinstance(h, subprocess.Popen):
            h.wait()
        else:
            h.join()
            h.close()


class LocalExecutor(Executor):
    """Each run in its own local process; `jobs` runs at once (keep 1 on a single GPU)."""

    name = "local"

    def __init__(self, jobs: int = 1, start_method: str | None = None):
        if jobs < 1:
            raise UserError(f"--jobs must be at least 1, got {jobs}")
        if start_method is None:
            start_method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        if start_method not in START_METHODS:
            raise UserError(f"unknown start method {start_method!r}; allowed: {', '.join(START_METHODS)}")
        self.slots = jobs
        self.start_method = start_method
        self._tmp = tempfile.TemporaryDirectory(prefix="membench-sweep-")
        self._dir = Path(self._tmp.name)
        self._running: list[_Proc] = []
        self._n = 0
        self._ctx = None

    # -- process start ------------------------------------------------------
    def _context(self):
        if self._ctx is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["membench.sweep.preload"])
            self._ctx = ctx
        return self._ctx

    def _paths(self) -> tuple[Path, Path, Path]:
        self._n += 1
        base = self._dir / f"run{self._n:05d}"
        return base.with_suffix(".spec.json"), base.with_suffix(".out.json"), base.with_suffix(".log")

    def _launch(self, target: str, args: list[Any]):
        """Start `worker.<target>(*args)` in a fresh process."""
        if self.start_method == "forkserver":
            from . import worker

            p = self._context().Process(target=getattr(worker, target), args=tuple(args), daemon=False)
            p.start()
            return p
        raise AssertionError(target)

    def _spawn(self, argv: list[str], log: Path | None = None) -> subprocess.Popen:
        env = dict(os.environ)
        env.setdefault("HF_HUB_OFFLINE", "1")
        err = open(log, "ab") if log else None  # noqa: SIM115 - closed below, the child keeps its copy
        try:
            return subprocess.Popen([sys.executable, "-m", "membench.sweep.worker", *argv], env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err if err is not None else subprocess.DEVNULL)
        finally:
            if err is not None:
                err.close()

    # -- interface ----------------------------------------------------------
    def preflight(self, specs: list[RunSpec]) -> list:
        spec_path, out, log = self._paths()
        dicts = [s.to_dict() for s in specs]
        if self.start_method == "forkserver":
            h = self._launch("preflight_child", [dicts, str(out)])
            h.join()
        else:
            spec_path.write_text(json.dumps(dicts))
            h = self._spawn(["preflight", str(spec_path), str(out)], log)
            h.wait()
        try:
            record = json.loads(out.read_text())
        except (OSError, json.JSONDecodeError):
            raise RuntimeError(f"sweep preflight process died: {_tail_file(log) or 'no output'}") from None
        if record.get("status") != "ok":
            raise RuntimeError(f"sweep preflight failed:\n{record.get('error')}")
        return list(record.get("problems", []))

    def submit(self, spec: RunSpec, timeout: float | None) -> None:
        spec_path, out, log = self._paths()
        if self.start_method == "forkserver":
            handle = self._launch("child", [spec.to_dict(), str(out), str(log), None, os.getpid()])
        else:
            spec_path.write_text(json.dumps(spec.to_dict()))
            handle = self._spawn([str(spec_path), str(out), str(log)], log)
        self._running.append(_Proc(spec, timeout, handle, out, log))

    def poll(self, wait_s: float = 0.1) -> list[tuple[RunSpec, RunRecord]]:
        deadline = time.monotonic() + wait_s
        while True:
            done = []
            for proc in list(self._running):
                code = proc.exitcode()
                if code is None:
                    if proc.timeout is not None and time.monotonic() - proc.t0 > proc.timeout:
                        proc.kill()
                        done.append((proc, RunRecord(
                            status="timeout", error=f"timed out after {proc.timeout:g} s\n{_tail_file(proc.log)}"
                            .rstrip(), wall_s=round(time.monotonic() - proc.t0, 3))))
                    continue
                proc.reap()
                try:
                    record = RunRecord.from_dict(json.loads(proc.out.read_text()))
                except (OSError, json.JSONDecodeError):
                    record = RunRecord(
                        status="failed", error=f"run process died ({_exit_reason(code)})\n{_tail_file(proc.log)}"
                        .rstrip(), wall_s=round(time.monotonic() - proc.t0, 3))
                done.append((proc, record))
            for proc, _ in done:
                self._running.remove(proc)
                for path in (proc.out, proc.log, proc.out.with_name(proc.out.name.replace(".out.", ".spec."))):
                    path.unlink(missing_ok=True)
            if done or time.monotonic() >= deadline or not self._running:
                return [(proc.spec, rec) for proc, rec in done]
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        for proc in self._running:
            proc.kill()
        self._running.clear()
        self._tmp.cleanup()


class RayExecutor(Executor):
    """Each run is a Ray task in a fresh worker process (max_calls=1): 1 GPU for cuda, 1 CPU otherwise."""

    name = "ray"

    def __init__(self, address: str | None = None, slots: int | None = None, start_method: str | None = None):
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'membench[ray]'") from None
        self.address = address
        self._slots = slots
        self._start_method = start_method
        self._pending: dict[Any, tuple[RunSpec, float | None, float]] = {}
        self.slots = slots or 1

    def start(self, specs: list[RunSpec]) -> None:
        import ray

        env = {k: os.environ[k] for k in ("MEMBENCH_PLUGINS", "HF_HUB_OFFLINE", "PYTHONPATH") if k in os.environ}
        env.setdefault("HF_HUB_OFFLINE", "1")
        try:
            if not ray.is_initialized():
                ray.init(address=self.address or None, runtime_env={"env_vars": env}, log_to_driver=False,
                         include_dashboard=False, configure_logging=False)
        except ConnectionError as exc:
            raise UserError(f"--ray-address {self.address}: cannot connect to a Ray cluster ({exc})") from None
        res = ray.cluster_resources()
        need_gpu = any(needs_gpu(s.device) for s in specs)
        if need_gpu and not res.get("GPU"):
            raise UserError("--device cuda with --executor ray: the Ray cluster has no GPU resources")
        if self._slots is None:
            self.slots = max(1, int(res.get("GPU" if need_gpu else "CPU", 1)))
        from . import worker

        self._task = ray.remote(max_calls=1, max_retries=0)(worker.execute_to_dict)

    def preflight(self, specs: list[RunSpec]) -> list:
        # names and options are checked on the driver's machine, in one local process
        local = LocalExecutor(start_method=self._start_method or "spawn")
        try:
            return local.preflight(specs)
        finally:
            local.close()

    def submit(self, spec: RunSpec, timeout: float | None) -> None:
        gpu = needs_gpu(spec.device)
        ref = self._task.options(num_gpus=1 if gpu else 0, num_cpus=0 if gpu else 1).remote(spec.to_dict())
        self._pending[ref] = (spec, timeout, time.monotonic())

    def poll(self, wait_s: float = 0.1) -> list[tuple[RunSpec, RunRecord]]:
        import ray

        if not self._pending:
            return []
        ready, _ = ray.wait(list(self._pending), num_returns=len(self._pending), timeout=wait_s)
        out = []
        for ref in ready:
            spec, _timeout, t0 = self._pending.pop(ref)
            try:
                record = RunRecord.from_dict(ray.get(ref))
            except Exception as exc:  # noqa: BLE001 - a crashed worker, a lost node...
                record = RunRecord(status="failed", error=f"{type(exc).__name__}: {exc}"[-2000:],
                                   wall_s=round(time.monotonic() - t0, 3))
            out.append((spec, record))
        now = time.monotonic()
        for ref, (spec, timeout, t0) in list(self._pending.items()):
            if timeout is not None and now - t0 > timeout:
                ray.cancel(ref, force=True)
                del self._pending[ref]
                out.append((spec, RunRecord(status="timeout", error=f"timed out after {timeout:g} s",
                                            wall_s=round(now - t0, 3))))
        return out

    def close(self) -> None:
        import ray

        for ref in list(self._pending):
            try:  # noqa: SIM105
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001
                pass
        self._pending.clear()


def make_executor(name: str = "local", *, jobs: int = 1, ray_address: str | None = None,
                  start_method: str | None = None) -> Executor:
    if name == "local":
        return LocalExecutor(jobs=jobs, start_method=start_method)
    if name == "ray":
        return RayExecutor(address=ray_address, slots=jobs if jobs > 1 else None, start_method=start_method)
    if ":" in name:  # package.module:Class
        mod, _, cls = name.partition(":")
        try:
            factory = getattr(importlib.import_module(mod), cls)
        except (ImportError, AttributeError) as exc:
            raise UserError(f"--executor {name}: cannot load it ({exc})") from None
        return factory(jobs=jobs)
    raise UserError(f"unknown executor {name!r}; allowed: {', '.join(EXECUTORS)} or package.module:Class")
