"""The 2-D CNN baselines' model code (``unet``, ``deeplabv3``): the networks (:mod:`.unet`,
:mod:`.deeplab`), the ``autoseg-cnn2d/1`` checkpoint format (:mod:`.checkpoint`) and pixel
handling (:mod:`.pixels`), shared by the segmenters (:mod:`autoprompt_seg.segment.
slicewise`) and the trainer (:mod:`autoprompt_seg.train.cnn2d`). Nothing here imports
torch at import time.
"""
