"""Large-batch optimisers (LAMB, LARS) and a registry that builds any supported optimiser by name.

Example::

    from biasdecay.optim import LAMB, build_optimizer
    opt = LAMB(param_groups, lr=0.04, weight_decay=0.01)      # trust ratio where λ != 0
    opt = LAMB([{"params": [bn.bias], "weight_decay": torch.zeros(())}])  # λ read every step
    opt = build_optimizer("lars", model.parameters(), lr=1.0)

The functional forms live in their modules (``biasdecay.optim.lamb.lamb``, ``...lars.lars``), as
in torch.optim: exporting them here would shadow the submodules of the same name.
"""

from biasdecay.optim._common import LAYER_ADAPTATION
from biasdecay.optim.lamb import LAMB
from biasdecay.optim.lars import LARS
from biasdecay.optim.registry import (
    OPTIMIZERS,
    OptimizerSpec,
    build_optimizer,
    optimizer_names,
    optimizer_spec,
)

__all__ = [
    "LAMB",
    "LARS",
    "LAYER_ADAPTATION",
    "OPTIMIZERS",
    "OptimizerSpec",
    "build_optimizer",
    "optimizer_names",
    "optimizer_spec",
]
