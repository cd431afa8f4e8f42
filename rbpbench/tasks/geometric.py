"""What the citation task takes from torch_geometric, in a module of its own because importing
torch_geometric takes seconds: only processes that load a citation dataset pay for it."""

from __future__ import annotations

import warnings

from torch import Tensor

with warnings.catch_warnings():
    # torch_geometric's import scripts a helper with torch.jit, which torch now deprecates.
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.script")
    from torch_geometric.datasets import Planetoid
    from torch_geometric.nn import MessagePassing


__all__ = ["NeighbourSum", "Planetoid"]


class NeighbourSum(MessagePassing):
    """m_v = sum of h_u over the edges u -> v (each node's neighbours, no self-loop)."""

    def __init__(self) -> None:
        super().__init__(aggr="add")

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return self.propagate(edge_index, x=x)

    def message(self, x_j: Tensor) -> Tensor:
        return x_j
