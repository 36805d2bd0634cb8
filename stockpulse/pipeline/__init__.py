"""The pipeline framework: runs, stages (fetch -> transform -> load), payload hand-off and loading."""
