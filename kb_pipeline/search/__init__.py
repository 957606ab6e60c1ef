"""Search: hybrid retrieval, who may read what, export and the overview of what the knowledge base holds."""
