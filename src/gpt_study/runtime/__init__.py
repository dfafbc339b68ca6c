"""Process-level helpers: what a command sets up around the library, not what it computes.

What lives here: ``device`` (device, precision, threads and their tuning), ``plan`` (every
device-dependent choice of a training run, resolved once: the ``RuntimePlan``), ``distributed``
(torchrun's process group, read as ranks and reductions), ``files`` (atomic writes and the guard
that refuses to replace what the project did not write), ``progress`` (the progress bar) and
``errors`` (:class:`~gpt_study.runtime.errors.UserError`, one line and exit code 2). This
package module imports nothing, so ``runtime.errors`` stays light for every importer.
"""
