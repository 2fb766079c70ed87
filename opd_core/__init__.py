"""OPD Lab's engine: objectives, the toy world, the training loop, the run directory and diagnostics.

Nothing in this package imports Streamlit: everything here is usable from the command line, a notebook
or another trainer.
"""

__version__ = "0.1.0"
