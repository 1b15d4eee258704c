"""Data shipped with nasplat: NAS-Bench-201's CIFAR-10 table (nasbench201/) and the latencies of its cells on
14 real devices (hw_latency/); each folder's README.md says what its columns hold and where they come from."""
