"""What an architecture costs, measured on the built model, never guessed."""
from .flops import count_costs, count_macs, count_params, measure
from .model import CostModel

__all__ = ["CostModel", "count_costs", "count_macs", "count_params", "measure"]
