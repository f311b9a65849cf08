"""jaxstep.data."""
