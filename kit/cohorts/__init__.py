"""Cohorts on SageMaker: the cohort CSV, `kit plan` (what each path costs), `kit batch` (transform jobs) and
the async runner behind `kit slides run --endpoint`."""
