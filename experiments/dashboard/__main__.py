"""`python -m experiments.dashboard --home H`: serve a node home's dashboard."""
import sys

from experiments.dashboard.server import main

sys.exit(main())
