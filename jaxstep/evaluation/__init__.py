"""jaxstep.evaluation: policy evals (greedy, pass@k), statistics, reward-hacking statistics."""
