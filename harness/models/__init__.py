"""Models: the name → factory registry, the architectures (imported here, so every factory is registered as soon as
the package is), the Localizer wrapper, safe checkpoint loading, model cards and cost counting."""
from harness.models import nets  # noqa: F401  (importing the architectures registers them)
from harness.models.cards import LineageStep, ModelCard, list_cards, load_card, trained_input_size
from harness.models.checkpoint import CheckpointError, load_checkpoint, sha256_file
from harness.models.localizer import IMAGENET_MEAN, IMAGENET_STD, Localizer, build_localizer, build_sdecoder
from harness.models.registry import create_model, get_entry, list_models, register_model

__all__ = ["create_model", "get_entry", "list_models", "register_model", "CheckpointError", "load_checkpoint",
           "sha256_file", "IMAGENET_MEAN", "IMAGENET_STD", "Localizer", "build_localizer", "build_sdecoder",
           "LineageStep", "ModelCard", "list_cards", "load_card", "trained_input_size"]
