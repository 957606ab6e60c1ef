"""The slice of a SentenceTransformer that sentence-transformers' losses and IR evaluator call, over an AdapterSet.

Our embed adapter is not a SentenceTransformer (it is a task adapter on a shared frozen backbone), but the
reference implementations of MultipleNegativesRankingLoss, its cached variant, GISTEmbedLoss and
InformationRetrievalEvaluator only need: `model(features)["sentence_embedding"]`, `tokenizer`,
`max_seq_length`, `preprocess(texts)`, `device`, `model[0]`, `encode*(texts, ...)`, and a model card to note metrics in.
`task=None` is the untuned backbone: the guide of GISTEmbedLoss and the baseline of the gate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from kb_pipeline.backbone.heads import pool
from kb_pipeline.tasks.embed import embed_texts
from kb_pipeline.tasks.encoding import encode


class _NoModelCard:
    """The evaluator records its metrics on the model card; we report them ourselves."""

    def set_evaluation_metrics(self, *args, **kwargs) -> None:
        return None


class AdapterEncoder(nn.Module):
    """Mean-pooled sentence embeddings from the backbone with `task`'s adapter active (None: untuned)."""

    similarity_fn_name = "cosine"

    def __init__(self, adapters, task: str | None, max_length: int, memo: dict[str, np.ndarray] | None = None):
        super().__init__()
        self.memo = memo  # text -> vector of every text encode() saw (validation reuses them for its loss)
        self.__dict__["adapters"] = adapters  # not a submodule: which parameters train is the train loop's choice
        self.task = task
        self.max_seq_length = max_length
        self.tokenizer = adapters.backbone.tokenizer
        self.model_card_data = _NoModelCard()

    def __getitem__(self, index: int) -> nn.Module:
        """A SentenceTransformer is a pipeline of modules; losses peek at the first (is it a StaticEmbedding?)."""
        return (self,)[index]

    @property
    def device(self) -> torch.device:
        return next(self.adapters.backbone.model.parameters()).device

    def preprocess(self, texts: Sequence[str]) -> dict[str, Tensor]:
        ids, mask = encode(self.adapters, list(texts), self.max_seq_length)  # (B, T), (B, T)
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}

    tokenize = preprocess

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        with self.adapters.using(self.task):
            hidden = self.adapters.hidden_states(features["input_ids"], features["attention_mask"])  # (B, T, H)
        return {**features, "sentence_embedding": pool(hidden, features["attention_mask"], "mean")}  # (B, H)

    def encode(self, sentences, batch_size: int = 32, convert_to_tensor: bool = False, **_) -> np.ndarray | Tensor:
        """L2-normalised vectors, as search stores them (prompts and truncate_dim do not apply here)."""
        texts = [sentences] if isinstance(sentences, str) else list(sentences)
        if self.memo is None:
            vectors = embed_texts(self.adapters, texts, self.task, batch_size, self.max_seq_length)
        else:
            new = list(dict.fromkeys(t for t in texts if t not in self.memo))
            self.memo.update(zip(new, embed_texts(self.adapters, new, self.task, batch_size, self.max_seq_length)))
            vectors = np.stack([self.memo[t] for t in texts]) if texts else np.zeros((0, 0), dtype=np.float32)
        return torch.from_numpy(vectors) if convert_to_tensor else vectors

    encode_query = encode
    encode_document = encode

    @staticmethod
    def similarity(a: Tensor, b: Tensor) -> Tensor:
        from sentence_transformers.util import cos_sim

        return cos_sim(a, b)
