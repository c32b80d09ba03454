"""nnU-Net v2 in one place: model folders and inference (:mod:`.model`), the lightweight
detector's training recipe (:mod:`.train`), installing any nnU-Net v2 model
(:mod:`.install`, its network building in :mod:`.network`, its folder check in
:mod:`.checkpoint`), full-scan detection (:mod:`.fullscan`) and the anatomy veto filter
(:mod:`.veto`).

Nothing here imports torch or nnunetv2 at import time, and nothing reads or writes the
``nnUNet_*`` environment variables of this process: models are loaded from their folder
(the detector's training runs nnU-Net in a subprocess given its own ``nnUNet_*``
environment, :mod:`.train`).
"""
