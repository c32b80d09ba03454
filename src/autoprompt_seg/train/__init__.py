"""Training for the learned backends (U-Net, DeepLabV3, MedSAM, MedSAM2, nnU-Net).

:func:`autoprompt_seg.train.core.train_model` is the one entry point; each model has its
own module (``cnn2d``, ``medsam``, ``medsam2``, ``nnunet``) with a ``train(cfg, cases, run,
*, settings, init_checkpoint, progress)`` function.
"""
