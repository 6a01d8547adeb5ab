"""Reference implementations `choreo bench` measures choreo against, in the same run."""
