"""The FER model as a registry artifact: the unfolded MiniXception state dict, torch-saved."""

from __future__ import annotations

import io

import torch

from models.fer_edge import MiniXception

__all__ = ["FER_FORMAT", "fer_to_bytes", "fer_from_bytes"]

FER_FORMAT = "torch-state-dict/mini-xception"


def fer_to_bytes(model: MiniXception) -> bytes:
    """Serialise a trainable (unfolded) model."""
    if model.folded:
        raise ValueError("only an unfolded MiniXception can be shipped")
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, buf)
    return buf.getvalue()


def fer_from_bytes(data: bytes) -> MiniXception:
    """Load an artifact (``weights_only``: no code runs), in eval mode."""
    model = MiniXception()
    model.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
    return model.eval()
