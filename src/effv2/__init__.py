"""effv2: the EfficientNetV2 system in PyTorch."""

__version__ = "0.1.0"

# first: reads whether the user set TORCHINDUCTOR_CACHE_DIR before torch._dynamo's import fills it in
from .runtime import compile_cache as _compile_cache  # noqa: E402, F401, I001

from .models import ArchSpec, EfficientNetV2, Stage, create_model, list_models  # noqa: E402


def load(path, *, prefer_ema: bool = True):  # noqa: ANN001, ANN201 - lazy: `import effv2` stays light
    """The model saved at ``path`` (model folder, run folder or checkpoint), in eval mode, with
    ``model.data_config``, ``model.classes`` and ``model.transform`` (PIL image -> input tensor)."""
    from .inference.load import load as _load

    return _load(path, prefer_ema=prefer_ema)


__all__ = ["ArchSpec", "EfficientNetV2", "Stage", "__version__", "create_model", "list_models", "load"]
