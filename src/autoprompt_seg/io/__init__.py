"""Input and output of images: DICOM series, NIfTI/NRRD, RTSTRUCT and SEG ground truth."""
