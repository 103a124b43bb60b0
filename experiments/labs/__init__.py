"""Lab scripts: one-off studies, each runnable as `python -m
experiments.labs.NAME` with the command its docstring gives."""
