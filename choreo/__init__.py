"""The `choreo` command: demo, workers, orders, traces, load runs. See choreo.cli."""
