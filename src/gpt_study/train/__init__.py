"""Training: the study's recipe, made resumable, observable and fast.

``fit(build_config(...))`` trains; the parts, each in its own module:

* ``setup``: preset and overrides -> the run's Config (new or resumed);
* ``run``: ``fit`` sets up data, model, optimizer and state, then calls the loop;
* ``loop``: optimizer steps; every epoch validation, a sample story, checkpoints;
* ``optim``: AdamW (or Muon with AdamW) and the schedule; ``state``: state.json and RNG states;
* ``validate``: validation through the held-out scorer, and the sample story;
* ``observe``, ``metrics``, ``plot``: console and log, metrics files, loss.png, wandb;
* ``signals``: SIGINT / SIGTERM stop after the step and save; ``context``: the run's parts.
"""

from gpt_study.train.context import TrainResult
from gpt_study.train.optim import lr_at
from gpt_study.train.run import fit
from gpt_study.train.setup import build_config
from gpt_study.train.validate import validate

__all__ = ["TrainResult", "build_config", "fit", "lr_at", "validate"]
