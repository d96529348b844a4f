"""AU detection models; ``create_model`` builds any of them by name or from a config."""

from aukit.models.factory import (
    ARCHITECTURES,
    PRESETS,
    create_model,
    list_models,
    model_config,
    register_model,
    register_preset,
)

__all__ = ["ARCHITECTURES", "PRESETS", "create_model", "list_models", "model_config",
           "register_model", "register_preset"]
