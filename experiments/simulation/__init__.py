"""Labelled simulations for tests and benchmarks.

- `synthetic.py`   a hidden landscape that scores edits in milliseconds (arena `synthetic/...`)
- `simulate.py`    an in-process swarm of real loops on the synthetic trainer
"""
