"""Pooling and the small task heads that sit on the frozen backbone's hidden states.

Heads are tiny MLPs saved as plain tensors plus a JSON-able config dict (`head.config()`),
so an adapter folder can be reloaded with `build_head(config)` without pickled code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Average of the real (mask == 1) token vectors. (B, T, H), (B, T) -> (B, H)."""
    mask = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    total = (hidden * mask).sum(dim=1)  # (B, H)
    count = mask.sum(dim=1).clamp(min=1.0)  # (B, 1)
    return total / count


def last_token_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Vector of the last real token, which in a causal model has seen the whole text.

    Works for left or right padding. (B, T, H), (B, T) -> (B, H).
    """
    positions = torch.arange(mask.shape[1], device=mask.device)  # (T,)
    last = (mask.long() * (positions + 1)).argmax(dim=1)  # (B,) index of the last mask == 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def pool(hidden: Tensor, mask: Tensor, method: str = "mean") -> Tensor:
    if method == "mean":
        return mean_pool(hidden, mask)
    if method == "last":
        return last_token_pool(hidden, mask)
    if method == "mean+last":  # decoders: the mean alone dilutes what the last token summarises
        return torch.cat([mean_pool(hidden, mask), last_token_pool(hidden, mask)], dim=-1)
    raise ValueError(f"unknown pooling {method!r}; expected 'mean', 'last' or 'mean+last'")


def pooled_size(hidden_size: int, method: str) -> int:
    return 2 * hidden_size if method == "mean+last" else hidden_size


def span_mean(hidden: Tensor, rows: Tensor, starts: Tensor, ends: Tensor) -> Tensor:
    """Mean of hidden[row, start:end] for each span (a sentence inside its chunk).

    hidden (B, T, H); rows, starts, ends (N,) integer tensors -> (N, H). Differentiable; an empty span gives 0.
    """
    batch, width, size = hidden.shape
    positions = torch.arange(width, device=hidden.device)  # (T,)
    inside = (positions >= starts[:, None]) & (positions < ends[:, None])  # (N, T)
    weights = inside.to(hidden.dtype) / inside.sum(dim=1, keepdim=True).clamp(min=1).to(hidden.dtype)  # (N, T)
    spread = hidden.new_zeros((len(rows), batch, width))  # (N, B, T): each span's weights on its own row
    spread[torch.arange(len(rows), device=hidden.device), rows] = weights
    return spread.reshape(len(rows), batch * width) @ hidden.reshape(batch * width, size)  # (N, H)


def segment_mean(hidden: Tensor, rows: Tensor, starts: Tensor, ends: Tensor) -> Tensor:
    """span_mean for many short spans (words): gathers only the tokens inside them, so memory is O(tokens).

    hidden (B, T, H); rows, starts, ends (N,) -> (N, H). Differentiable; an empty span gives 0.
    """
    lengths = (ends - starts).clamp(min=0)  # (N,)
    owner = torch.repeat_interleave(torch.arange(len(rows), device=hidden.device), lengths)  # (M,) span of each token
    offset = torch.arange(len(owner), device=hidden.device) - torch.repeat_interleave(
        torch.cumsum(lengths, 0) - lengths, lengths
    )  # (M,) position of each token inside its span
    tokens = hidden[rows[owner], starts[owner] + offset]  # (M, H)
    total = hidden.new_zeros((len(rows), hidden.shape[-1])).index_add(0, owner, tokens)  # (N, H)
    return total / lengths.clamp(min=1).unsqueeze(-1).to(hidden.dtype)


def l2_normalize(x: Tensor) -> Tensor:
    """Unit-length rows, so a dot product is a cosine similarity (what the vector index stores)."""
    return F.normalize(x, p=2, dim=-1)


class ClassifierHead(nn.Module):
    """logits = W2 tanh(W1 x + b1) + b2, with dropout on x and on the hidden layer."""

    def __init__(self, hidden_size: int, num_labels: int, inner: int = 256, dropout: float = 0.1):
        super().__init__()
        self.hidden_size, self.num_labels, self.inner, self.dropout_p = hidden_size, num_labels, inner, dropout
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden_size, inner)
        self.out = nn.Linear(inner, num_labels)

    def forward(self, x: Tensor) -> Tensor:  # (B, H) -> (B, L)
        h = torch.tanh(self.dense(self.dropout(x)))  # (B, inner)
        return self.out(self.dropout(h))  # (B, L)

    def config(self) -> dict:
        return {
            "type": "classifier",
            "hidden_size": self.hidden_size,
            "num_labels": self.num_labels,
            "inner": self.inner,
            "dropout": self.dropout_p,
        }


def position_features(index: Tensor, count: Tensor) -> Tensor:
    """[relative position, 1/(index+1)]: where a sentence sits, and a sharp 'is it the lead' signal.

    index, count: (N,) integer tensors -> (N, 2).
    """
    index, count = index.float(), count.float()
    relative = index / (count - 1).clamp(min=1.0)  # (N,) 0 for the first sentence, 1 for the last
    return torch.stack([relative, 1.0 / (index + 1.0)], dim=-1)


class SentenceScorer(nn.Module):
    """Extractive summarisation: score = MLP([pooled sentence vector ; position features]), a logit."""

    num_position_features = 2

    def __init__(self, hidden_size: int, inner: int = 256, dropout: float = 0.1):
        super().__init__()
        self.hidden_size, self.inner, self.dropout_p = hidden_size, inner, dropout
        self.mlp = ClassifierHead(hidden_size + self.num_position_features, 1, inner, dropout)

    def forward(self, sentence_vectors: Tensor, positions: Tensor) -> Tensor:  # (N, H), (N, 2) -> (N,)
        x = torch.cat([sentence_vectors, positions.to(sentence_vectors.dtype)], dim=-1)  # (N, H+2)
        return self.mlp(x).squeeze(-1)  # (N,)

    def config(self) -> dict:
        return {"type": "sentence_scorer", "hidden_size": self.hidden_size, "inner": self.inner,
                "dropout": self.dropout_p}


class WordTagger(nn.Module):
    """Deletion-based compression: keep-logit of a word = MLP([word vector ; its sentence's vector ; position])."""

    num_position_features = 2

    def __init__(self, hidden_size: int, inner: int = 128, dropout: float = 0.1):
        super().__init__()
        self.hidden_size, self.inner, self.dropout_p = hidden_size, inner, dropout
        self.mlp = ClassifierHead(2 * hidden_size + self.num_position_features, 1, inner, dropout)

    def forward(self, words: Tensor, sentences: Tensor, positions: Tensor) -> Tensor:  # (N, H), (N, H), (N, 2) -> (N,)
        x = torch.cat([words, sentences, positions.to(words.dtype)], dim=-1)  # (N, 2H+2)
        return self.mlp(x).squeeze(-1)  # (N,)

    def config(self) -> dict:
        return {"type": "word_tagger", "hidden_size": self.hidden_size, "inner": self.inner, "dropout": self.dropout_p}


def build_head(config: dict) -> nn.Module:
    """Rebuild an (untrained) head from its `config()`; load its tensors with `load_state_dict`."""
    kind = config.get("type")
    if kind == "classifier":
        return ClassifierHead(config["hidden_size"], config["num_labels"], config["inner"], config["dropout"])
    if kind == "sentence_scorer":
        return SentenceScorer(config["hidden_size"], config["inner"], config["dropout"])
    if kind == "word_tagger":
        return WordTagger(config["hidden_size"], config["inner"], config["dropout"])
    raise ValueError(f"unknown head type {kind!r} in head config")


def head_state(head: nn.Module, prefix: str = "") -> dict[str, Tensor]:
    """Detached CPU copies of a head's tensors, ready for safetensors."""
    return {prefix + k: v.detach().cpu().clone() for k, v in head.state_dict().items()}


def load_head(config: dict, state: dict[str, Tensor], prefix: str = "") -> nn.Module:
    """build_head + load the tensors stored under `prefix`; returned in eval mode."""
    head = build_head(config)
    own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    head.load_state_dict(own)
    return head.eval()
