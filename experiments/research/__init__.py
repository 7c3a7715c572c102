"""Research policy: what to run next, what to keep, what to re-run.

- `loop.py`        the research loop: propose, run, publish, verify, build on the best
- `scoreboard.py`  scores in one arena: baselines, noise, kept edits, best parents
- `programs.py`    which programs the arena has run, or live nodes run now
- `crossover.py`   merges of sibling improvements, ports from other arenas
- `trainers.py`    the trainer a node uses: the real harness or the synthetic landscape
"""
