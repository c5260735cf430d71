"""`membench report`: PNG figures and one self-contained HTML page from a results database.

    from membench.report import build_report, pareto_mask
    build_report("membench.db", "reports/run1")   # reports/run1/report.html + *.png

Imports pandas and matplotlib only (never torch), so a report opens in about a second.
"""

from __future__ import annotations

from .build import Report, build_report
from .pareto import frontier_path, pareto_mask

__all__ = ["build_report", "Report", "pareto_mask", "frontier_path"]
