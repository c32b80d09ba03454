"""Any nnU-Net v2 model: install (:mod:`.install`), full-scan detection (:mod:`.fullscan`)
and the anatomy veto filter (:mod:`.veto`).

Nothing here imports torch or nnunetv2 at import time, and nothing reads or writes the
``nnUNet_*`` environment variables: models are loaded from their folder.
"""
