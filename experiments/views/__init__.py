"""What people see: read-only views of a node and its arena.

- `view.py`        the live terminal view (rich) or plain log lines
- `progress.py`    one experiment's progress bar
- `arena_view.py`  one arena's experiments as rows (what the dashboard and plot draw)
- `plot.py`        `loopy plot`: the progress chart as a PNG
- `dashboard/`     the web dashboard (`loopy start --dashboard`, or standalone with
                   `python -m experiments.views.dashboard`)
"""
