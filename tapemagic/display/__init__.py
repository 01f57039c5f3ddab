"""How results look: HTML, markdown and text for a `TapeResult`, heatmaps, PNG plots.

Display objects read data the core made; they never import the IPython layer.
"""
