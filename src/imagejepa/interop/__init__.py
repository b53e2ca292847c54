"""Other formats in and out: official ``.pth.tar`` checkpoints, Hugging Face
and timm weights, the released checkpoints' registry, and loading that never unpickles code.

- ``convert``: readers of every format -> :class:`~imagejepa.interop.bundle.ModelBundle`;
  ``export``: writers; ``keymaps``: the explicit name maps between them;
- ``loading``: ``load_encoder`` / ``load_pretrained``; ``registry``: the released checkpoints;
- ``safe_load``: ``torch.load(weights_only=True)`` with clear refusals;
"""
