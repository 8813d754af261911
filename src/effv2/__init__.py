"""effv2: the EfficientNetV2 system in PyTorch."""

__version__ = "0.1.0"

from .models import ArchSpec, EfficientNetV2, Stage, create_model, list_models  # noqa: E402

__all__ = ["ArchSpec", "EfficientNetV2", "Stage", "__version__", "create_model", "list_models"]
