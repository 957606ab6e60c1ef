"""Alembic migrations; installed as kb_pipeline.migrations so `kb init` works outside a checkout."""
