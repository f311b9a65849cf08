"""jaxstep.rm: reward-model training data (exact, PRM800K, Monte-Carlo labels), encoding, evaluation."""
