"""jaxstep.reports: markdown tables and PNG plots, and each stage's report.md."""
