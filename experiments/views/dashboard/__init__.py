"""The web dashboard of a running node: a read-only page on localhost.

- `server.py`: the HTTP server (fixed routes, GET/HEAD only), `start_dashboard`
  (a handle with `.url` and `.close()`), `serve_dashboard` (the same as a trio
  service) and a standalone entry, `python -m experiments.views.dashboard --home H`.
- `source.py`: the answers, from the node's store opened read-only, cached until
  the store changes; `DashboardError` for a store or port it cannot use.
- `static/`: the page itself (HTML, vanilla JS drawing inline SVG, CSS): no build
  step, nothing fetched from the internet.

The scores come from `experiments.views.arena_view`, the same rules the loop and
`loopy status` use.
"""
from experiments.views.dashboard.server import Dashboard, serve_dashboard, start_dashboard
from experiments.views.dashboard.source import DashboardError

__all__ = ["Dashboard", "DashboardError", "serve_dashboard", "start_dashboard"]
