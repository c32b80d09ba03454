"""Segmenters: turn box prompts into one lesion mask each (see :mod:`autoprompt_seg.backends`)."""
