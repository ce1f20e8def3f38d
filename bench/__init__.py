"""Throughput and latency benchmark of vistream against raw onnxruntime; run `python -m bench.run`."""
