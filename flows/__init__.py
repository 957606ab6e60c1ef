"""Prefect flows that orchestrate kb_pipeline library functions (the library never imports prefect)."""
