"""Cohorts on SageMaker: what a cohort is (cohort.py: slides from files, S3 or a CSV), `kit plan` (what each path
costs), one module per engine (the async runner behind `kit slides run --endpoint`, the training job behind
`kit cohort run` / `status`, `kit batch`'s transform jobs)."""
