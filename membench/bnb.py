"""Importing bitsandbytes offline and quietly (no torch at this module's import).

On a CPU with AVX512-BF16, bitsandbytes' CPU backend asks the Hugging Face Hub for a 4-bit matmul kernel
(`kernels.get_kernel`) when it is imported: a network call, and a warning when it fails. membench never
downloads anything, and the kernel only speeds up 4-bit matmuls on real CPU tensors, so the import runs
with the `kernels` package hidden: bitsandbytes then uses its own CPU kernels, as it does without it.
"""

from __future__ import annotations

import importlib
import logging
import sys
import warnings

from .errors import UserError


def import_bitsandbytes():
    """The bitsandbytes module, imported without reaching the network; a UserError if it is not installed."""
    if "bitsandbytes" in sys.modules:
        return sys.modules["bitsandbytes"]
    hidden = sys.modules.get("kernels", ...)
    sys.modules["kernels"] = None  # `from kernels import ...` raises ImportError inside bitsandbytes
    log = logging.getLogger("bitsandbytes")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module("bitsandbytes")
    except ImportError as exc:
        raise UserError(f"bitsandbytes is not installed ({exc}): pip install bitsandbytes") from None
    finally:
        log.setLevel(level)
        if hidden is ...:
            del sys.modules["kernels"]
        else:
            sys.modules["kernels"] = hidden
