"""Inference: one preprocessing definition, loading any saved model, exports and model folders."""
