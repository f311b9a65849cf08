"""jaxstep.rl."""
