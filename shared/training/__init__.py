"""Training: the start of an experiment (experiment), one phase of fit (fitting), transfer
learning (transfer), recipes, callbacks and where it runs (distribute).

Re-exports what the notebooks call (``from shared import training as train``): ``train.start``,
``train.fit``, ``train.fit_within_budget``, ``train.fit_transfer`` and ``train.fit_head``.
"""

from shared.training.budget import fit_within_budget
from shared.training.experiment import start
from shared.training.fitting import fit
from shared.training.transfer import fit_head, fit_transfer

__all__ = ["fit", "fit_head", "fit_transfer", "fit_within_budget", "start"]
