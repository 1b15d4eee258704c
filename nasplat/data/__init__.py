"""Data shipped with nasplat: NAS-Bench-201's CIFAR-10 table (nasbench201/, see its README.md)."""
