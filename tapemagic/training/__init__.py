"""The training core: `Trainer` and its engine. TensorFlow and Keras only (no IPython)."""
