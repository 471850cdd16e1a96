"""Evaluation and reports: the results schema, codec runs, RD plots, BD-rate tables, HTML, traces."""
