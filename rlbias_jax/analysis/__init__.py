"""Analysis and report: H1/H2 statistics, figures and report.md/report.html from run directories.

Reads only result tables (docs/run_directory.md); never imports rl, models, tasks or probing.
"""

from rlbias_jax.analysis.report import analyse, write_report
from rlbias_jax.analysis.tables import ReportError, load_run

__all__ = ["ReportError", "analyse", "load_run", "write_report"]
