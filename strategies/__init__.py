"""Search strategies: one module per family; each registers itself with @register_strategy."""
