"""The thin IPython and ipywidgets layer: the magics, `%train` and the training panel."""
