"""jaxstep.stages: one module per stage command (sft, eval, orm/prm, ppo, pipeline, sweep).

Each reads as setup -> the shared loop (`jaxstep.train.loop`) -> finish, and holds no
library code."""
