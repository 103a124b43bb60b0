"""The experiment config, the train loop and its steps, the optimiser,
checkpoints and the run directory, metrics, sharding, starting from another
run and distilling template libraries."""
