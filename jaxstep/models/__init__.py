"""jaxstep.models."""
