"""`l2lda-tune report` (docs/architecture.md, checkpoints and export): the paper's tables from
finished studies in MLflow.

* :mod:`~orchestrator.report.collect` — one record per finished trial, read from MLflow;
* :mod:`~orchestrator.report.tables` — rows, cells, Markdown and parquet tables, footnotes;
* :mod:`~orchestrator.report.paired` — the paired comparisons under each table;
* :mod:`~orchestrator.report.plots` — the heatmap and the ε-curves;
* :mod:`~orchestrator.report.build` — ``report.md`` and its files, and the command.
"""
