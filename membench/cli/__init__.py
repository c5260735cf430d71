"""`membench` command line. One module per command; each registers itself on `app`.

Bad input (a `UserError`, or a usage error from typer) prints one line on
stderr and exits 2, never a traceback. A fault of the machine (`FaultError`: a full
disk, a locked database) prints one line and exits 1.
"""

from __future__ import annotations

import sys
import warnings

import typer

from ..errors import FaultError, UserError

# add_completion: typer's --install-completion / --show-completion for the user's shell
app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="How much memory fine-tuning a transformer costs, layer by layer.")


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        print(f"membench {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="print membench's version and exit")) -> None:
    """How much memory fine-tuning a transformer costs, layer by layer."""

# Importing a command module registers its command(s) on `app`.
from . import bench_compare, fit, listing, report, results, run, sweep, train, verify  # noqa: E402,F401


def main(argv: list[str] | None = None) -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        code = app(args=argv, prog_name="membench", standalone_mode=False)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except FaultError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        # typer/click usage errors (typer vendors click, so match by shape, not by class)
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            hint = ""
            ctx = getattr(exc, "ctx", None)
            if ctx is not None:
                hint = f" (see `{ctx.command_path} --help`)"
            print(f"error: {exc.format_message()}{hint}", file=sys.stderr)
            sys.exit(exc.exit_code)
        if type(exc).__name__ == "Abort":
            sys.exit(1)
        raise
    sys.exit(code if isinstance(code, int) else 0)
