"""What a run tells its user: the tables printed at the end, and the report with plots.

`write_report` turns a results document (the content of ``results.json``, see `lifelong.runs.results`)
into ``report.md`` and ``report.html`` in the run folder, with PNG plots under ``plots/``: the
accuracy-matrix heatmap and each task's score over the stream for every strategy, forgetting per task
across strategies, the comparison table, the config and the versions. The HTML is one self-contained
file (plots embedded as data URIs, inline CSS, no script) so it can be mailed or attached as it is.
`report_runs` regenerates reports from run folders and combines several runs of one benchmark into
one report.

Modules: `tables` (printed tables), `view` (a document as the report reads it), `plots`, `markdown`,
`html`, `write` (one report into a folder) and `combine` (`report_runs`).
"""

from lifelong.report.combine import report_runs
from lifelong.report.plots import PLOTS_DIR, per_task_forgetting
from lifelong.report.tables import METRIC_LABELS, comparison_table, matrix_table, metrics_table, print_results
from lifelong.report.write import REPORT_HTML, REPORT_MD, write_report
from lifelong.runs.results import RESULTS_FILE, versions, write_results

__all__ = [
    "METRIC_LABELS",
    "PLOTS_DIR",
    "REPORT_HTML",
    "REPORT_MD",
    "RESULTS_FILE",
    "comparison_table",
    "matrix_table",
    "metrics_table",
    "per_task_forgetting",
    "print_results",
    "report_runs",
    "versions",
    "write_report",
    "write_results",
]
