"""Training: the study's recipe, made resumable, observable and fast.

``fit(build_config(...))`` trains (``train.fit.fit``, ``train.setup.build_config``); the parts,
each in its own module:

* ``setup``: preset and overrides -> the run's Config (new or resumed);
* ``fit``: sets up data, model, optimizer and state, then calls the loop;
* ``loop``: optimizer steps; every epoch validation, a sample story, checkpoints (the loss
  itself is :mod:`gpt_study.model.loss`, shared with evaluation);
* ``optim``: AdamW (or Muon with AdamW) and the schedule; ``state``: state.json and RNG states;
* ``budget``: ``--fit_epochs``, the schedule sized to ``--max_time``; ``ema``: ``--ema``, the
  averaged weights that validation and ``best/`` use;
* ``validate``: validation through the held-out scorer, and the sample story;
* ``observe``, ``metrics``, ``plot``: console and log, metrics files, loss.png, wandb;
* ``signals``: SIGINT / SIGTERM stop after the step and save; ``context``: the run's parts.

The run folder's file names live in :mod:`gpt_study.runs`. This package module imports nothing,
so that importing one part never starts the trainer.
"""
