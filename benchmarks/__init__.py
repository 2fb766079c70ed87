"""OPD Lab benchmarks: each script prints a markdown table; `python -m benchmarks` runs the suite."""
