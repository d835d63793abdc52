"""Training side of the project: data, models, training loop, evaluation and ONNX export.

The only package that imports torch. It writes `exported_models/` (ONNX files and
`manifest.json`, whose schema lives in `service.manifest`) for the service to serve.
"""
