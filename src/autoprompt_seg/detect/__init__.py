"""Detectors: propose one 3-D box prompt per tumour (see :mod:`autoprompt_seg.backends`)."""
