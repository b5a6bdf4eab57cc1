"""`capitu study`: the grid of variants x seeds on equal budgets, and the report.

config.py (what to run) → runner.py (prepare, train, eval, bench, generate; resumable) →
report.py (results.json/csv, report.md/html, with stats.py and plots.py)."""
