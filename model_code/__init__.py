"""Everything that runs inside the serving container: model loading, the SageMaker handler, the server."""

__version__ = "0.1.0"
