"""``python -m autoprompt_seg.cli``: the same as ``autoseg``."""

from .app import main

if __name__ == "__main__":  # pragma: no cover
    main()
