"""The benchmark suite (`python -m experiments.benchmark`) and the family
cost table (`python -m experiments.compare_cost`)."""
