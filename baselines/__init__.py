"""Baseline rerankers (registered under their slugs). Filled in by the baseline issues."""
from baselines import dlcm, midnn, mir, pier, prm, reference, sequential, setrank

__all__ = ["dlcm", "midnn", "mir", "pier", "prm", "reference", "sequential", "setrank"]  # importing a module registers its slugs
