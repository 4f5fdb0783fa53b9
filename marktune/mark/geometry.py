"""The Knowledge Base's geometry (kernels, paddings, sizes per block), without torch.

``marktune.mark.config`` checks a KB depth against the image size with it before anything heavy
is imported; ``marktune.mark.model`` builds the blocks from it.

Example:
    >>> [g.size_out for g in kb_geometry(32, 3)], max_kb_depth(32)
    ([14, 6, 2], 4)
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BlockGeometry:
    kernel: int
    padding: int
    size_in: int
    size_out: int  # after conv and 2x2 max-pool


def kb_geometry(image_size: int, depth: int) -> list[BlockGeometry]:
    """Kernel/padding of each KB block and the spatial sizes it produces.

    Blocks 1-3 are the paper's: kernels ``size//8``, ``size//10``, 2, no padding
    (4, 3, 2 at 32 px; 10, 8, 2 at 84 px). Deeper blocks use kernel 3 with
    padding 1, which keeps the size through the conv, so each further block only
    halves it in the max-pool. A depth whose output would be smaller than 1 pixel
    is rejected.
    """
    if depth < 1:
        raise ValueError(f"the KB needs at least one block (got depth {depth})")
    paper_kernels = [max(1, image_size // 8), max(1, image_size // 10), 2]
    blocks, size = [], image_size
    for b in range(depth):
        kernel, padding = (paper_kernels[b], 0) if b < 3 else (3, 1)
        conv = size + 2 * padding - kernel + 1
        out = conv // 2
        if conv < 1 or out < 1:
            max_depth = len(blocks)
            raise ValueError(f"at {image_size} px the image shrinks below 1 pixel after block "
                             f"{b + 1}; allowed depths are 1..{max_depth}")
        blocks.append(BlockGeometry(kernel, padding, size, out))
        size = out
    return blocks


def max_kb_depth(image_size: int) -> int:
    depth = 1
    while True:
        try:
            kb_geometry(image_size, depth + 1)
        except ValueError:
            return depth
        depth += 1
