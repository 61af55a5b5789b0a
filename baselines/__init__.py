"""Baseline rerankers (registered under their slugs). Filled in by the baseline issues."""
