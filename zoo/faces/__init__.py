"""Face detection (MTCNN), tracking and alignment for the video models (FTCN)."""
