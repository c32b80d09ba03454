"""MONAI's ``lung_nodule_ct_detection`` bundle: a 3-D RetinaNet (ResNet50-FPN) trained on
LUNA16, as the ``monai_retinanet`` detector.

Everything the bundle's ``configs/inference.json`` does is reproduced here with MONAI's own
classes (``monai.apps.detection``, ``monai.transforms``):

* :mod:`.network` -- the network, anchor generator and ``RetinaNetDetector`` with the
  bundle's box selector (score 0.02, top 1000 per level, NMS 0.22, 300 boxes) and sliding
  window (512 x 512 x 192, overlap 0.25);
* :mod:`.checkpoint` -- strict loading of the bundle's ``models/model.pt`` (a plain state
  dict of the RetinaNet, or ``{"model": state_dict}`` as MONAI's ``CheckpointLoader``
  also accepts), with missing and unexpected keys named;
* :mod:`.preprocess` -- RAS orientation, 0.703125 x 0.703125 x 1.25 mm, -1024..300 HU
  scaled to 0..1;
* :mod:`.inference` -- the detector's forward pass (sliding window only when the image is
  larger than the window, as the bundle's ``RetinaNetInferer``) and the bundle's
  postprocessing to world (LPS) ``cccwhd`` boxes;
* :mod:`.boxes` -- world (or resampled-grid) boxes to our voxel :class:`~autoprompt_seg.
  types.Box3D` on the study's own grid, whatever its orientation;
* :mod:`.detector` -- the backend (``create`` is the registry factory).

Only :mod:`.boxes` is importable without torch.
"""

#: The model zoo bundle reproduced (``configs/metadata.json`` version).
BUNDLE_NAME = "lung_nodule_ct_detection"
BUNDLE_VERSION = "0.6.8"
#: The manifest name and architecture of its weights.
WEIGHTS_NAME = "monai_lung_nodule_ct_detection"
ARCHITECTURE = "monai_retinanet_resnet50_fpn_luna16"
