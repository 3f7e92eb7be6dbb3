"""Heads built from the MLP builder MoCo-v3 uses (``build_mlp``)."""

from __future__ import annotations

import torch.nn as nn


def build_mlp(num_layers: int, input_dim: int, mlp_dim: int, output_dim: int, last_bn: bool = True,
               last_affine: bool = False) -> nn.Sequential:
    """facebookresearch/moco-v3's ``build_mlp``: ``num_layers`` Linear layers without bias, each hidden
    one followed by BatchNorm1d and ReLU, the last one by BatchNorm1d(affine=False) if ``last_bn``.

    Args:
        num_layers: number of Linear layers.
        input_dim: input width.
        mlp_dim: hidden width.
        output_dim: output width.
        last_bn: a BatchNorm1d after the last Linear (default: True).
        last_affine: that BatchNorm learns a scale and shift, write-up 001_*'s ``BatchNorm1d(dim)`` (default:
            False, moco-v3's, which follows SimCLR without gamma).
    """
    layers = []
    for i in range(num_layers):
        dim1 = input_dim if i == 0 else mlp_dim
        dim2 = output_dim if i == num_layers - 1 else mlp_dim
        layers.append(nn.Linear(dim1, dim2, bias=False))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(dim2), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(dim2, affine=last_affine))
    return nn.Sequential(*layers)
