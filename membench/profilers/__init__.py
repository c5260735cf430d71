"""Profilers: measure any nn.Module, know nothing of methods or backbones."""

from .ledger import FORWARD, RECOMPUTE, LedgerReport, SavedTensorLedger
from .live import LiveMemoryTracker
from .nvml import NvmlSampler
from .step import StepPlan, StepProfile, default_loss, profile_step

__all__ = ["SavedTensorLedger", "LedgerReport", "LiveMemoryTracker", "NvmlSampler", "StepPlan", "StepProfile",
           "profile_step", "default_loss", "FORWARD", "RECOMPUTE"]
