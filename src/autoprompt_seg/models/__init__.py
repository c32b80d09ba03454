"""Model families (nnU-Net, MONAI RetinaNet, ...): installation, loading and the backends
built on them."""
