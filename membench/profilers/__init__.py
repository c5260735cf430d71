"""Profilers: measure any nn.Module, know nothing of methods or backbones."""

from .ledger import FORWARD, RECOMPUTE, LedgerReport, SavedTensorLedger
from .live import LiveMemoryTracker
from .nvml import NvmlSampler
from .step import StepProfile, default_loss, profile_step

__all__ = ["SavedTensorLedger", "LedgerReport", "LiveMemoryTracker", "NvmlSampler", "StepProfile",
           "profile_step", "default_loss", "FORWARD", "RECOMPUTE"]
