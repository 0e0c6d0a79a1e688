"""Benchmarks of the pipeline's speed and overheads; run `python benchmarks/throughput.py --help`."""
