"""jaxstep.train."""
