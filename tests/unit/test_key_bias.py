"""KeyBias.dense(): the dense feature of a sparse key index, with ragged rows padded by -1."""

from __future__ import annotations

import torch

from components.attention.types import KeyBias


def test_dense_of_ragged_sparse_index_keeps_key_zero():
    # row 0 biases keys 0 and 3; row 1 only key 2, padded with -1 (which clamps onto key 0)
    bias = KeyBias(coef=torch.ones(2), index=torch.tensor([[0, 3], [2, -1]]))
    dense = bias.dense(5, torch.float32)
    assert dense.tolist() == [[1, 0, 0, 1, 0], [0, 0, 1, 0, 0]]
    # the padding entry first, the real key 0 second, and the reverse: same feature either way
    for index in ([[-1, 0]], [[0, -1]]):
        assert KeyBias(coef=torch.ones(2), index=torch.tensor(index)).dense(3, torch.float32).tolist() == [[1, 0, 0]]
