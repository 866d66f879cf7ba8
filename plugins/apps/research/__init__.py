"""hanlin research: a planner that grows a graph of sub-questions, searcher agents answering them concurrently,
and a final answer whose every claim cites a passage a searcher actually read."""
