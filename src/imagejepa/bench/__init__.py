"""``imagejepa bench``: speed figures as ratios measured in one run.

- ``train``: images/s of full training steps on a named standard config, FLOPs per image
  counted with ``torch.utils.flop_counter`` on the very masks that were timed, and the
  fraction of the machine's matmul peak (timed in the same run) that this achieves.
- ``masks``: multi-block masks per second, vectorised sampler against a per-sample Python
  loop written the way the official sampler is.
- ``embed``: encoder inference against Hugging Face's ``IJepaModel``, same weights.
- ``roofline``: the sustained matmul peak of given shapes, and what machine a figure is from;
  ``flops``: FLOPs of a training step or an encoder, counted on 'meta' tensors.
"""
