"""Doing one experiment and proposing the next: four jobs, one subpackage each.

- `run/`         running one experiment safely: budgets, hardware, the static screen, the
                 sandbox, the workspace, the data feed, the export and evaluation children,
                 the model graph and `harness.run_experiment()` that drives them
- `agents/`      proposing the next edit: the brief, `mutate`, Optuna, CLI and HTTP agents
- `research/`    research policy: the loop, the scoreboard, programs run, crossover,
                 which trainer a node uses
- `views/`       what people see: the live view, progress bars, the dashboard, the plot
- `simulation/`  the synthetic trainer and the in-process swarm (labelled simulations)

Dependencies point down the list's reverse: `views` and `research` use `run` and
`agents`; `run` uses neither. Nothing here imports torch at module level: the node
process imports torch only when it detects a GPU; training and evaluation happen in
child processes.
"""
