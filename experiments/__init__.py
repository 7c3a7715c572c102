"""Doing one experiment safely, and proposing the next.

Running one edit (DESIGN.md, "Experiments: running one edit safely"):

- `budget.py`         budgets ("60s", "300ktok") and arena strings
- `hardware.py`       device detection, hardware class, profile, evaluation settings
- `static_check.py`   patch and source screening before anything runs
- `sandbox.py`        running an untrusted child process; lists what it isolates and what not
- `workspace.py`      the per-experiment directory under home/runs/<id>/
- `evaluate_child.py` the trusted evaluation child (part of the genome id)
- `harness.py`        run_experiment() / run_patch(): check -> train -> evaluate -> result

Proposing and looping: `agents/`, `loop.py`, `synthetic.py` (labelled simulations),
`progress.py`, `view.py`.

Nothing here imports torch at module level: the node process imports torch only when it
detects a GPU; training and evaluation happen in child processes.
"""
