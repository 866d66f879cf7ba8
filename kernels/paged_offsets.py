"""Where a token's key/value row sits in the paged KV cache, in 64-bit arithmetic; shared by the attention kernels.

The cache of one layer is [num_blocks, block_size, kv_heads, head_dim]. With most of a large GPU given to the cache
(85% of an H200 is ~120 GB) and a model with few layers, one layer's cache holds more than 2^31 elements, so an
offset computed from the int32 block table in 32-bit arithmetic wraps around and reads another block (or faults).
The block id is widened to int64 before anything is multiplied. ``paged_offsets_ref`` is the same sum in Python
integers (which do not overflow), for the tests.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def paged_offsets(phys, offs, kvh, d, kv_heads, head_dim, BLOCK_SIZE: tl.constexpr):
    """[BLOCK_SIZE, BLOCK_D] element offsets of rows ``offs`` of physical block ``phys``, kv head ``kvh``."""
    return (phys.to(tl.int64) * BLOCK_SIZE + offs[:, None]) * kv_heads * head_dim + kvh * head_dim + d[None, :]


def paged_offsets_ref(phys: int, offset: int, kvh: int, dim: int, kv_heads: int, head_dim: int,
                      block_size: int) -> int:
    return (phys * block_size + offset) * kv_heads * head_dim + kvh * head_dim + dim
