"""jaxstep.parallel."""
