"""Whole-slide work from a workstation: `kit slides run`, synthetic test slides, the demo's picture."""
