"""The tasks (classify, embed, summarise, ...): one module each, one TaskSpec each, registered in registry.py."""
