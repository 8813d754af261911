"""EfficientNetV2 models: architectures as data (spec), blocks, the builder and the registry."""

from .blocks import DualBatchNorm2d, add_aux_bn_state, bn_mode, drop_aux_bn_state, init_aux_from_main, set_bn_mode
from .efficientnetv2 import EfficientNetV2
from .registry import PAPER_MODELS, create_model, get_card, list_models, register
from .spec import ACTS, NORMS, ArchSpec, ModelCard, SpecError, Stage

__all__ = [
    "ACTS",
    "NORMS",
    "ArchSpec",
    "DualBatchNorm2d",
    "EfficientNetV2",
    "ModelCard",
    "PAPER_MODELS",
    "SpecError",
    "Stage",
    "add_aux_bn_state",
    "bn_mode",
    "create_model",
    "drop_aux_bn_state",
    "get_card",
    "init_aux_from_main",
    "list_models",
    "register",
    "set_bn_mode",
]
