"""A user module for the ``torch-ddp`` trainer: a small MLP learning a linear target.

    mlrig experiments create ddp-demo --trainer torch-ddp \
        --param module=examples/distributed/torch_regression.py \
        --param nproc_per_node=2 --param epochs=5 --cpus 2 --start

Every hyperparameter of the experiment reaches these functions as ``params``.
"""

import torch
from torch import nn
from torch.utils.data import TensorDataset

FEATURES = 8


def build_model(params):
    """The network every rank wraps in DistributedDataParallel."""
    width = int(params.get("width", 32))
    return nn.Sequential(nn.Linear(FEATURES, width), nn.ReLU(), nn.Linear(width, 1))


def build_dataset(params):
    """(train, validation): the same on every rank; the trainer shards it per rank."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(int(params.get("samples", 4096)), FEATURES, generator=generator)
    weights = torch.linspace(-1.0, 1.0, FEATURES).unsqueeze(1)
    y = (x @ weights).squeeze(1) + 0.05 * torch.randn(len(x), generator=generator)
    cut = len(x) * 4 // 5
    return TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])


def loss(output, target):
    """Mean squared error on the network's single output."""
    return nn.functional.mse_loss(output.squeeze(-1), target)
