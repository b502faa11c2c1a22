"""Deployment definitions (prefect.yaml) and the scripts that serve or set them up."""
