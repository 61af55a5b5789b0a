"""The data layer: named sources, the paper's protocol, the cross-fitted MF retriever and the
shared candidate lists (``build_candidate_lists``)."""
from benchmark.data.lists import CandidateLists, build_candidate_lists
from benchmark.data.sources import SOURCES, get_source, resolve_files

__all__ = ["CandidateLists", "build_candidate_lists", "SOURCES", "get_source", "resolve_files"]
