"""finprog: which model and technique reach a FinQA exact-match accuracy for the fewest FLOPs."""

__version__ = "0.1.0"
