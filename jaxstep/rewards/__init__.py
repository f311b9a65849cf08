"""jaxstep.rewards."""
