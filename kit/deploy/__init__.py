"""Deploying: checks before (preflight) and waits after (wait) `cdk deploy`."""
