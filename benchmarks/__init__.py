"""Speed benchmarks of the service against its baselines (DESIGN.md section 8).

`python -m benchmarks` runs them all and prints every figure beside its bar
(`benchmarks.run`); `benchmarks.baseline` is the hand-written FastAPI server
the service is compared with, `benchmarks.loadgen` the load generator,
`benchmarks.inprocess` the torch-eager and onnxruntime in-process figures.
Not imported by the service.
"""
