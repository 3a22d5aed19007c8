"""kexue's training controls inside the user's training stack.

Each submodule imports its framework only when it is imported itself, and says what to install
when the framework is missing:

* :mod:`kexue.integrations.lightning` (``pip install 'kexue[integrations]'``): ``EMACallback``
  (the average taken only over optimizer steps that really stepped, swapped in for
  validate/test/predict, kept in the checkpoint) and ``GradientTransformCallback`` for
  ``lightning.Trainer``; ``transform_handles(optimizer)``.
* :mod:`kexue.integrations.hf` (``pip install 'kexue[hf]'``): ``EMACallback``, a
  ``transformers.TrainerCallback`` (EMA weights for evaluate and save, exact resume), and
  ``trainer_optimizers``, which builds ``Trainer(optimizers=...)`` from
  :func:`kexue.train.param_groups` and :func:`kexue.train.with_transforms` with no double
  clipping and the base learning rate in the logs.

accelerate needs no adapter: ``Accelerator.prepare`` wraps the optimizer and steps the
``torch.optim.Optimizer`` inside, whose step pre-hook :func:`kexue.train.with_transforms` uses
(``tests/test_integrations_accelerate.py``).
"""
