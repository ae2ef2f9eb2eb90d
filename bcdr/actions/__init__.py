"""One module per verb: orchestration only, returning result objects (no printing)."""
