"""EfficientNetV2 models: architectures as data (spec), blocks, the builder and the registry."""

from .efficientnetv2 import EfficientNetV2
from .registry import PAPER_MODELS, create_model, get_card, list_models, register
from .spec import ArchSpec, ModelCard, SpecError, Stage

__all__ = ["ArchSpec", "EfficientNetV2", "ModelCard", "PAPER_MODELS", "SpecError", "Stage",
           "create_model", "get_card", "list_models", "register"]
