"""Search spaces: one module per family; each registers itself with @register_space."""
