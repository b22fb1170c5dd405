"""Reports: side-by-side tables of models (text), and report.html with its plots.

    print(format_table({"original": describe(a, shape), "pruned": describe(b, shape)}))
    write_report("runs/x/report.html", "cnnzip prune", [Section("Before and after", table=comparison_cells(rows))])
"""

from .html import Section, write_report
from .plots import can_plot, history_plot, size_accuracy_plot, stage_sizes_plot, widths_plot
from .tables import comparison_cells, describe, format_table, latency_table, ratio_row

__all__ = [
    "Section", "write_report",
    "can_plot", "history_plot", "size_accuracy_plot", "stage_sizes_plot", "widths_plot",
    "comparison_cells", "describe", "format_table", "latency_table", "ratio_row",
]
