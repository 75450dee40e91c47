"""The cohort worker: a SageMaker training job that turns a channel of slides into features files.

`contract` holds what the worker and the operator side (`kit cohort ...`) must agree on; the worker itself
runs as `python -m model_code.cohort --ml-root DIR` (the image's `train`).
"""
