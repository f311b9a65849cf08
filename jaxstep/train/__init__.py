"""jaxstep.train: the one training loop, optimizers, non-finite guards."""
