"""One-shot search machinery shared by strategies and spaces: the contract between them (`OneShotSpace`,
`CellSpace`, `Supernet`, `PathSupernet`), the cell spaces' layouts, ops and mixed edges, the bi-level training
of DARTS, the operation-space-reduction engine and its bandits, single paths, and CP-NAS's child-parent losses."""
from .contract import CellSpace, OneShotSpace, PathSupernet, Supernet

__all__ = ["CellSpace", "OneShotSpace", "PathSupernet", "Supernet"]
