"""Reference benchmark suite for neural rerankers in multi-stage recommender systems (DNR reproduction)."""

__version__ = "0.1.0"
