"""Model artifacts: build (builder, demo models, exporting), verify and upload them. The only part of the
kit that imports torch."""
