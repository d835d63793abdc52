"""Serving side: BentoML + onnxruntime over `exported_models/`. Never imports torch."""
