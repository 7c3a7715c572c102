"""`python -m experiments.views.dashboard --home H`: serve a node home's dashboard."""
import sys

from experiments.views.dashboard.server import main

sys.exit(main())
