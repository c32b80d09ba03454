"""The 2-D CNN baselines' model code (``unet``, ``deeplabv3``): the networks (:mod:`.unet`,
:mod:`.deeplab`), the ``autoseg-cnn2d/1`` checkpoint format (:mod:`.checkpoint`) and pixel
handling (:mod:`.pixels`), the segmenters themselves (:mod:`.segmenter`: options,
slice-by-slice inference, ``create_unet`` / ``create_deeplab``), all used by the trainer
(:mod:`autoprompt_seg.train.cnn2d`, which stays in ``train``: it needs the benchmark's
datasets and ``train.core``). Nothing here imports torch at import time.
"""
