"""fer-bench: reproducible facial-expression-recognition experiments on FER-2013."""

__version__ = "0.1.0"

# The FER-2013 label order (the CSV's `emotion` column is an index into this tuple).
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# The side of a FER-2013 face in pixels: the data is kept at this size, and every model takes it.
IMAGE_SIDE = 48
