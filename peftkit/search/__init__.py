"""`peftkit search`: hyper-parameter search over any flags, strategies included, on Optuna; every trial is an
ordinary run directory. :mod:`.space` reads the search space, :mod:`.study` runs the trials, :mod:`.report` writes
the leaderboard, the plot and best.yaml, and :mod:`.trial` is the trial's side (pruning)."""
