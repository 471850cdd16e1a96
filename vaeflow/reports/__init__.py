"""Evaluation and reports: rate-distortion runs against conventional codecs, RD plots, BD-rate
tables, self-contained HTML reports and trace files, from one results document
(``results.schema.json``).

```python
from vaeflow import reports

doc = reports.evaluate("samples/", qualities=[10, 30, 50, 70], baselines=["jpeg", "webp"])
print(reports.format_bd_table(reports.bd_table(doc)))
reports.rd_figure(doc)  # a matplotlib figure (the report extra)
```
"""

from vaeflow.reports.codecs import BASELINES, DEFAULT_BASELINES, reconstruct
from vaeflow.reports.evaluation import Variant, evaluate
from vaeflow.reports.html import write_report
from vaeflow.reports.matched import Matched, at_bpp
from vaeflow.reports.plots import rd_figure, save_rd_plot
from vaeflow.reports.results import load as load_results
from vaeflow.reports.results import save as save_results
from vaeflow.reports.tables import bd_table, crossover_bpp, format_bd_table
from vaeflow.reports.trace import write_trace

__all__ = [
    "BASELINES",
    "DEFAULT_BASELINES",
    "Matched",
    "Variant",
    "at_bpp",
    "bd_table",
    "crossover_bpp",
    "evaluate",
    "format_bd_table",
    "load_results",
    "rd_figure",
    "reconstruct",
    "save_rd_plot",
    "save_results",
    "write_report",
    "write_trace",
]
