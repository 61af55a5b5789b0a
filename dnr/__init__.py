"""DNR: denoising neural reranker (paper §3). Filled in by the harness issue."""
