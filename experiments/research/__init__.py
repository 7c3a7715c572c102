"""Research policy: what to run next, what to keep, what to re-run.

- `loop.py`        `ResearchLoop`, `LoopConfig`: one step after another, each run recorded
- `parents.py`     `ParentChoice`: the best record, one of the top few, a speculative parent
- `claims.py`      `ClaimChecks`: which peers' claims are open to re-run or build on
- `reruns.py`      `Reruns`: the re-run queue, and attesting what a re-run measured
- `baselines.py`   `Baselines`: baseline seeds for the noise, health checks of the machine
- `proposals.py`   `Proposals`: the agent's next edit, checked, or a merge or port instead
- `runs.py`        `Trainer`, `StepOutcome`, `run_cancellable`: one run off trio's thread
- `swarm_link.py`  `connect_to_swarm`, `announce_policy`: the loop joined to a swarm node
- `scoreboard.py`  scores in one arena: baselines, noise, kept edits, best parents
- `programs.py`    which programs the arena has run, or live nodes run now
- `crossover.py`   merges of sibling improvements, ports from other arenas
- `trainers.py`    the trainer a node uses: the real harness or the synthetic landscape
"""
