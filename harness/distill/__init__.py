"""Compact distillation trainer: recorders, connectors, losses, the MMRazor-schema distiller, the training loop."""
