"""Closing the loop: which documents a person should review first, and where every label came from.

`review_queue` orders documents by how unsure the model is (abstained categories, close calls, tags near
their threshold); `document_label_view` tells gold (front matter or a review, with who, when and which
prediction) apart from predictions. Recording a verdict is kb_pipeline.store.reviews. The CLI (`kb review`)
and the web's review and document pages call these same functions.
"""

from kb_pipeline.review.queue import queue_counts, review_queue
from kb_pipeline.store.reviews import document_label_view, label_views

__all__ = ["document_label_view", "label_views", "queue_counts", "review_queue"]
