"""Commands run by hand after the pipeline, not by DVC: e.g. `python -m tools.sweep`."""
