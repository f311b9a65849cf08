"""jaxstep: train LLMs to solve math problems with RL from process/outcome reward models."""

__version__ = "0.1.0"
