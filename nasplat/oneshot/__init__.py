"""One-shot search machinery shared by strategies: the DARTS architect, the operation-space-reduction engine,
and CP-NAS's child-parent losses."""
