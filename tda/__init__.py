"""tda: training-data attribution for diffusion models with encoded ensembles."""

__version__ = "0.1.0"


class TdaError(Exception):
    """An error a user can cause and fix (bad path, broken run, bad argument).

    The CLI and the app show its message as one line, never a traceback.
    """
