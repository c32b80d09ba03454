"""autoprompt_seg: automatic-prompt lung tumour segmentation in CT.

The library never prints or exits; it raises :class:`autoprompt_seg.errors.AutosegError`
subclasses, each carrying the process exit code the CLI should use.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
