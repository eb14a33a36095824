"""Measuring real kernels on this machine: `moe-registry bench` and `run`, and the timer that
`tune` and the scripts in benchmarks/ share.

- :mod:`.timing`: the one timer (CUDA events or graph replays, warm-up, median / p10 / p90).
- :mod:`.bench`: the benchmark grid (layer shapes x eligible backends x token counts) -> cost table.
- :mod:`.analysis`: winners, crossovers and regret of cost tables (torch-free).
- :mod:`.report`: cost tables as rich tables and plots (torch-free).
- :mod:`.run`: one layer of a preset on this machine against the reference.

Nothing is imported here: `.analysis` and `.report` must load without torch.
"""
