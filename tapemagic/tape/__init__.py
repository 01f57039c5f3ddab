"""The tape core: run a cell under watched GradientTapes, take and explain its derivatives.

TensorFlow only: nothing here imports IPython, ipywidgets or matplotlib, so every piece
can be called from a plain Python script or test.
"""
