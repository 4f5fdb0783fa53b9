"""The four parts of MARK (``docs/method.md``, "The model").

* :class:`KnowledgeBase` - D masked conv blocks shared by all tasks.
* :class:`FeatureExtractor` - per-task F_t (small CNN, or a frozen ResNet-18 trunk).
* :class:`MaskGenerator` - per-task M_t: one scale per channel of every KB block.
* :class:`TaskHead` - per-task classifier C_t.

Example:
    >>> import torch
    >>> kb = KnowledgeBase(image_size=32)
    >>> masks = [torch.ones(2, c, 1, 1) for c in kb.channels]
    >>> kb(torch.zeros(2, 3, 32, 32), masks).shape
    torch.Size([2, 128])
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # the config is torch-free; the model only reads it
    from marktune.mark.config import MarkConfig


# torch-free, so that MarkConfig can check a KB depth without importing torch
from marktune.mark.geometry import BlockGeometry, kb_geometry, max_kb_depth  # noqa: E402,F401


class KnowledgeBase(nn.Module):
    """D blocks ``conv -> ReLU -> maxpool(2) -> * mask``, then ``Linear -> ReLU -> Dropout``.

    Each block runs max-pool before ReLU: the two commute (ReLU is monotonic, so the
    results are bit-identical), and pooling first applies ReLU to a quarter of the
    values. ``pool_first = False`` runs the spec's literal order (the reference path).
    """

    pool_first: bool = True

    def __init__(self, *, image_size: int = 32, in_channels: int = 3, depth: int = 3,
                 width: int = 64, latent_dim: int = 128, dropout: float = 0.5) -> None:
        super().__init__()
        self.geometry = kb_geometry(image_size, depth)
        self.channels = [width * 2 ** b for b in range(depth)]
        convs, c_in = [], in_channels
        for g, c_out in zip(self.geometry, self.channels):
            convs.append(nn.Conv2d(c_in, c_out, g.kernel, padding=g.padding))
            c_in = c_out
        self.convs = nn.ModuleList(convs)
        self.pool = nn.MaxPool2d(2)
        flat = self.channels[-1] * self.geometry[-1].size_out ** 2
        self.fc = nn.Linear(flat, latent_dim)
        self.dropout = nn.Dropout(dropout)
        self.latent_dim = latent_dim

    def block_outputs(self, x: torch.Tensor, masks: list[torch.Tensor]) -> list[torch.Tensor]:
        """The masked output of every block, first to last."""
        outputs = []
        for conv, mask in zip(self.convs, masks, strict=True):
            if self.pool_first:
                x = torch.relu(self.pool(conv(x))) * mask
            else:
                x = self.pool(torch.relu(conv(x))) * mask
            outputs.append(x)
        return outputs

    def forward(self, x: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
        x = self.block_outputs(x, masks)[-1]
        return self.dropout(torch.relu(self.fc(x.flatten(1))))


class FeatureExtractor(nn.Module):
    """F_t: ``conv(32,k=size//8)-BN-ReLU-pool-conv(32,k=size//10)-BN-ReLU-pool-Linear-ReLU``."""

    def __init__(self, *, image_size: int = 32, in_channels: int = 3, channels: int = 32,
                 latent_dim: int = 128) -> None:
        super().__init__()
        k1, k2 = max(1, image_size // 8), max(1, image_size // 10)
        size = ((image_size - k1 + 1) // 2 - k2 + 1) // 2
        if size < 1:
            raise ValueError(f"images of {image_size} px are too small for the feature extractor")
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, channels, k1), nn.BatchNorm2d(channels), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(channels, channels, k2), nn.BatchNorm2d(channels), nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten(), nn.Linear(channels * size * size, latent_dim), nn.ReLU(),
        )
        self.latent_dim = latent_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ResNetFeatureExtractor(nn.Module):
    """F_t variant: torchvision's ResNet-18 trunk, frozen, then a trainable ``Linear -> ReLU``.

    Weights come only from a local file (``weights_path``); without one the trunk
    keeps its random initialisation (tests). Nothing is downloaded.
    """

    def __init__(self, *, latent_dim: int = 128, weights_path: str | None = None) -> None:
        super().__init__()
        from torchvision.models import resnet18

        trunk = resnet18(weights=None)
        trunk.fc = nn.Identity()
        if weights_path is not None:
            state = torch.load(Path(weights_path), map_location="cpu", weights_only=True)
            trunk.load_state_dict(resnet_trunk_state(state, trunk, source=str(weights_path)))
        for p in trunk.parameters():
            p.requires_grad_(False)
        self.trunk = trunk.eval()
        self.head = nn.Sequential(nn.Linear(512, latent_dim), nn.ReLU())
        self.latent_dim = latent_dim

    def train(self, mode: bool = True) -> "ResNetFeatureExtractor":
        super().train(mode)
        self.trunk.eval()  # the trunk is frozen, BatchNorm statistics included
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            feats = self.trunk(x)
        return self.head(feats)


def resnet_trunk_state(state: object, trunk: nn.Module, *, source: str) -> dict[str, torch.Tensor]:
    """The trunk's weights from a saved ResNet-18 checkpoint, or a ValueError naming what does not fit.

    Accepted layouts: a plain ``state_dict``; one saved from ``DataParallel`` (every key
    prefixed ``module.``); either nested under ``"state_dict"``. The classifier (``fc.*``) is
    dropped. Anything else is refused: a partial load would leave the trunk silently random.
    """
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ValueError(f"resnet_weights {source}: expected a ResNet-18 state_dict (a dict of tensors), "
                         f"got {type(state).__name__}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = set(trunk.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        def some(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "") if keys else "none"
        raise ValueError(f"resnet_weights {source} is not a torchvision ResNet-18 checkpoint: missing keys: "
                         f"{some(missing)}; unexpected keys: {some(unexpected)}. Save "
                         "torchvision.models.resnet18's state_dict() (a DataParallel 'module.' prefix or "
                         "nesting under 'state_dict' is fine)")
    return state


class MaskGenerator(nn.Module):
    """M_t: maps F_t(x) to one scale per channel of each KB block (shape ``[B, C_b, 1, 1]``).

    ``init``: ``default`` (PyTorch's, the released code's) or ``identity`` (every mask ~1).
    """

    def __init__(self, *, latent_dim: int, block_channels: list[int], hidden: int = 0,
                 activation: str = "relu", init: str = "default") -> None:
        super().__init__()
        if init not in ("default", "identity"):
            raise ValueError(f"init must be default or identity (got {init!r})")
        act = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid}[activation]

        def one(c: int) -> nn.Module:
            if hidden == 0:
                return nn.Sequential(nn.Linear(latent_dim, c), act())
            return nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, c), act())

        self.nets = nn.ModuleList(one(c) for c in block_channels)
        if init == "default":  # PyTorch's nn.Linear init, as the released code
            return
        # identity: start at all-ones masks, the state the KB was warmed up in: random starts
        # can put ReLU masks at zero, where no gradient reaches them (chance accuracy).
        start = 1.0 if activation == "relu" else 4.0  # sigmoid(4) ~ 0.98
        for net in self.nets:
            last = [m for m in net if isinstance(m, nn.Linear)][-1]
            nn.init.zeros_(last.weight)
            nn.init.constant_(last.bias, start)

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        return [net(features)[:, :, None, None] for net in self.nets]


class TaskHead(nn.Linear):
    """C_t: ``Linear(latent_dim -> classes of task t)``."""

    def __init__(self, latent_dim: int, num_classes: int) -> None:
        super().__init__(latent_dim, num_classes)


def ones_masks(kb: KnowledgeBase, batch: int, device: torch.device | str) -> list[torch.Tensor]:
    """Masks of all ones: the KB used without any task's selection (phase 2)."""
    return [torch.ones(batch, c, 1, 1, device=device) for c in kb.channels]


def new_task_modules(config: "MarkConfig", *, image_size: int, in_channels: int, block_channels: list[int],
                     num_classes: int) -> tuple[nn.Module, MaskGenerator, TaskHead]:
    """A task's fresh F_t (``feature_extractor``), M_t and C_t, drawn from torch's random state."""
    if config.feature_extractor == "resnet18":
        extractor: nn.Module = ResNetFeatureExtractor(latent_dim=config.latent_dim,
                                                      weights_path=config.resnet_weights)
    else:
        extractor = FeatureExtractor(image_size=image_size, in_channels=in_channels,
                                     channels=config.fe_channels, latent_dim=config.latent_dim)
    mask_gen = MaskGenerator(latent_dim=config.latent_dim, block_channels=block_channels,
                             hidden=config.mask_hidden, activation=config.mask_activation, init=config.mask_init)
    return extractor, mask_gen, TaskHead(config.latent_dim, num_classes)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
