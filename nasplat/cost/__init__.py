"""What an architecture costs, measured on the built model, never guessed."""
from .flops import count_macs, count_params, measure

__all__ = ["count_macs", "count_params", "measure"]
