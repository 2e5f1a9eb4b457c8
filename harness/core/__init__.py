"""The core of decoder2: its constants and rules, the geometry (fit, rotation with EDT fill), the ROI step, the
BatchNorm modes, the metrics and the torchrun set-up. Everything else builds on this layer; it imports nothing above."""
