"""kexue's training controls inside the user's training stack.

Each submodule imports its framework only when imported itself:

* :mod:`kexue.integrations.lightning`: EMA and gradient-transform callbacks for
  ``lightning.Trainer`` (``pip install 'kexue[integrations]'``).
* :mod:`kexue.integrations.hf`: EMA as a ``transformers.TrainerCallback`` and an optimizer
  builder for ``transformers.Trainer(optimizers=...)`` that keeps clipping and logged learning
  rates honest.

accelerate needs no adapter: ``Accelerator.prepare`` returns a wrapper around the optimizer that
steps the wrapped ``torch.optim.Optimizer``, whose step pre-hook :func:`kexue.train.with_transforms`
already uses.
"""
