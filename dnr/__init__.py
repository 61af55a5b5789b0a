"""DNR: denoising neural reranker (paper §3). Filled in by the harness issue."""
from dnr import model, noise

__all__ = ["model", "noise"]
