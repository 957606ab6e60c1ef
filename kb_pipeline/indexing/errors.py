"""Index errors, importable without faiss so the CLI can name them cheaply."""


class IndexNotBuilt(RuntimeError):
    """There are no embeddings to build an index from yet; `kb enrich` makes them."""
