"""CDK constructs and stacks for the Optimus SageMaker endpoints."""
