"""Running one experiment safely (DESIGN.md, "Experiments: running one edit safely").

- `budget.py`         budgets ("60s", "300ktok") and arena strings
- `hardware.py`       device detection, hardware class, profile, evaluation settings
- `static_check.py`   patch and source screening before anything runs
- `sandbox.py`        running an untrusted child process; lists what it isolates and what not
- `workspace.py`      the per-experiment directory under home/runs/<id>/
- `data_feed.py`      the harness's side of the training data: serves batches, counts budgets
- `export_child.py`   the untrusted export step: the trained model becomes a graph
- `model_graph.py`    the model-as-data format and its trusted checks and interpreter
- `evaluate_child.py` the trusted evaluation child (part of the genome id)
- `model_store.py`    exported models of the node's own runs, for scoring them again
- `harness.py`        run_experiment() / run_patch(): check -> train -> export -> evaluate
- `model_stages.py`   the export and evaluation children: launched, limited, read back
"""
