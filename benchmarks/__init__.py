"""In-process timing of every measurement of the inference-optimization lab (python -m benchmarks)."""
