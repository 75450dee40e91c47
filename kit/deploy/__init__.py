"""Deploying: checks before and waits after `cdk deploy`."""
