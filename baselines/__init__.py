"""Baseline rerankers (registered under their slugs)."""
from baselines import (dcdr, diffurec, dlcm, egrerank, midnn, mir, nar4rec, pier, prm, reference, sequential,
                       setrank)

# importing a module registers its slugs
__all__ = ["dcdr", "diffurec", "dlcm", "egrerank", "midnn", "mir", "nar4rec", "pier", "prm", "reference",
           "sequential", "setrank"]
