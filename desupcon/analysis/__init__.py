"""Layer 6, analysis: figures of saved runs, plots, tables and the report, confidence intervals, reference results."""
