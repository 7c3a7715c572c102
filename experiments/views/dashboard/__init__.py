"""The web dashboard of a running node: a read-only page on localhost.

- `server.py`: the HTTP server (fixed routes, GET/HEAD only): `serve_dashboard`, a trio
  service (`node_dashboard` binds it to a node: what `loopy start --dashboard` runs in the
  node's nursery), `start_dashboard` (served from a background thread: a handle with
  `.url` and `.close()`), and a standalone entry, `python -m experiments.views.dashboard`.
- `source.py`: the answers, from the node's store opened read-only, cached until
  the store changes; `DashboardError` for a store or port it cannot use.
- `static/`: the page itself (HTML, vanilla JS drawing inline SVG, CSS): no build
  step, nothing fetched from the internet.

The scores come from `experiments.views.arena_view`, the same rules the loop and
`loopy status` use.
"""
from experiments.views.dashboard.server import (Dashboard, node_dashboard, open_dashboard,
                                                serve_dashboard, start_dashboard)
from experiments.views.dashboard.source import DashboardError

__all__ = ["Dashboard", "DashboardError", "node_dashboard", "open_dashboard",
           "serve_dashboard", "start_dashboard"]
