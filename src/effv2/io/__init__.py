"""Files on disk: atomic writes, safetensors weights, training-state checkpoints."""
