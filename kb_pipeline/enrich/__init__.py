"""Enrichment: the shared pass that brings every task's outputs up to date, and on-demand tag/summarise."""
