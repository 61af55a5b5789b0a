"""Baseline rerankers (registered under their slugs). Filled in by the baseline issues."""
from baselines import prm, reference

__all__ = ["prm", "reference"]  # importing a module registers its slugs
