"""Phase 4's inner optimiser, kept on the device: SGD under a plateau rule, no host syncs.

The released code trains each mini-task's KB copy with ``torch.optim.SGD`` under
``ReduceLROnPlateau(factor=0.5, patience=5, threshold=1e-3)``, stepped with the inner loss
every step. ``ReduceLROnPlateau.step`` needs that loss as a Python number, so a GPU would
wait for every one of phase 4's tiny steps (80,000 in a 20-task cifar100 trial). Here the
same rule keeps its state (best loss, bad-step count, learning rate) in tensors, and the
SGD update reads the learning rate from the device.

Both give the same learning rates step for step, and the same weights bit for bit where
the kernels are the same: the rate is ``lr * factor**cuts`` with ``factor`` a power of two,
so the update ``p - lr * (d * factor**cuts)`` scales ``d`` exactly and rounds once, as
``p.add_(d, alpha=-lr * factor**cuts)`` does (tests/mark/test_inner_optim.py checks both).

Example::

    >>> import torch
    >>> plateau = DevicePlateau(lr=0.1, shape=(), device=torch.device("cpu"))
    >>> for loss in [1.0] * 7:          # no improvement after the first: 6 bad steps > patience 5
    ...     plateau.step(torch.tensor(loss))
    >>> plateau.lr().item()
    0.05
"""

from __future__ import annotations

import math

import torch

# ReduceLROnPlateau's settings in the released code (mode "min", threshold_mode "rel",
# cooldown 0, min_lr 0, eps 1e-8 are torch's defaults).
INNER_PLATEAU = dict(factor=0.5, patience=5, threshold=1e-3)


class DevicePlateau:
    """``torch.optim.lr_scheduler.ReduceLROnPlateau`` (mode min, relative threshold, no
    cooldown, min_lr 0) with its state on the device, for one copy (``shape=()``) or for
    K copies at once (``shape=(K,)``, one rule per copy).

    ``scale`` is ``factor**cuts``: the learning rate is ``lr * scale``.
    """

    def __init__(self, *, lr: float, shape: tuple[int, ...], device: torch.device,
                 factor: float = INNER_PLATEAU["factor"], patience: int = INNER_PLATEAU["patience"],
                 threshold: float = INNER_PLATEAU["threshold"], eps: float = 1e-8) -> None:
        if math.frexp(factor)[0] != 0.5 or not 0 < factor < 1:
            # a power of two scales the update exactly; anything else would round differently
            # from torch.optim.SGD's single rounding
            raise ValueError(f"factor must be a power of two below 1 (0.5, 0.25, ...), not {factor}")
        self.base_lr, self.factor, self.patience, self.eps = lr, factor, patience, eps
        self.rel = 1.0 - threshold  # as ReduceLROnPlateau._is_better: a < best * (1 - threshold)
        # float64, as ReduceLROnPlateau compares Python floats
        self.best = torch.full(shape, math.inf, dtype=torch.float64, device=device)
        self.bad = torch.zeros(shape, dtype=torch.int64, device=device)
        self.scale = torch.ones(shape, dtype=torch.float32, device=device)

    def step(self, loss: torch.Tensor) -> None:
        """One ``ReduceLROnPlateau.step(loss)``, without reading ``loss`` on the host."""
        current = loss.detach().to(torch.float64)
        better = current < self.best * self.rel  # NaN is never better, as in torch
        self.best = torch.where(better, current, self.best)
        self.bad = torch.where(better, 0, self.bad + 1)
        cut = self.bad > self.patience
        self.bad = torch.where(cut, 0, self.bad)
        old = self.lr()
        cut = cut & (old - old * self.factor > self.eps)  # torch skips cuts smaller than eps
        self.scale = torch.where(cut, self.scale * self.factor, self.scale)

    def lr(self) -> torch.Tensor:
        """The learning rate of each copy (float64, on the device)."""
        return self.base_lr * self.scale.to(torch.float64)


def sgd_step_(params: list[torch.Tensor], grads: list[torch.Tensor], momentum_buffers: list[torch.Tensor | None],
              *, lr: float, scale: torch.Tensor, momentum: float, weight_decays: list[float]) -> None:
    """``torch.optim.SGD.step`` (no dampening, no Nesterov) in place, at rate ``lr * scale``.

    ``scale`` is a 0-dim tensor, or one value per copy when the parameters are stacked
    copies (dimension 0). ``momentum_buffers`` starts as ``[None] * len(params)``.
    """
    for i, (p, d, decay) in enumerate(zip(params, grads, weight_decays)):
        if decay != 0:
            d = d.add(p, alpha=decay)
        if momentum != 0:
            buf = momentum_buffers[i]
            if buf is None:
                momentum_buffers[i] = d = d.detach().clone()
            else:
                d = buf.mul_(momentum).add_(d)
        s = scale if scale.dim() == 0 else scale.view(-1, *(1,) * (p.dim() - 1))
        p.add_(d * s.to(d.dtype), alpha=-lr)
