"""Tiny, seeded, file-free backbones for tests: random weights from configs, tokenizers trained in memory."""

from __future__ import annotations

import string
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from kb_pipeline.backbone.loading import Backbone, backbone_from_model

VOCAB_SIZE = 1000
HIDDEN = 32
MAX_POSITIONS = 128
CORPUS = [
    "The quarterly report covers revenue, costs and the hiring plan for the support team.",
    "Reset your password from the account page; the link expires after twenty minutes.",
    "Incident 42: the nightly backup failed because the storage volume was full.",
    "Our onboarding guide explains laptops, badges, payroll and the first week schedule.",
    "Summaries should be short, factual and mention the owner of each action item.",
    "The API returns JSON with an id, a title, tags and the text of every document.",
    "Travel expenses above five hundred euros need approval from a department head.",
    "Search the knowledge base for policies, how-to guides and meeting notes.",
]


@contextmanager
def single_threaded() -> Iterator[None]:
    """Tiny matmuls on a busy 2-core box are ~50x faster on one thread than two (no OpenMP hand-offs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _bert_vocab(normalizer, pre_tokenizer) -> dict[str, int]:
    """A fixed WordPiece vocabulary: specials, every character (alone and as a ## continuation), every corpus word.

    Not trained: the WordPiece trainer breaks frequency ties differently in each process (even the vocabulary size
    varied), so a word's id, and with it every test that trains on the tiny BERT, changed from run to run.
    """
    words = {w for text in CORPUS for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))}
    chars = {c for w in words for c in w} | set(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = BERT_SPECIALS + sorted(chars) + sorted("##" + c for c in chars) + sorted(words - chars)
    return {t: i for i, t in enumerate(tokens)}


def _bert_tokenizer() -> PreTrainedTokenizerFast:
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    vocab = _bert_vocab(normalizer, pre_tokenizer)
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=MAX_POSITIONS, unk_token="[UNK]", pad_token="[PAD]",
        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
    )


def _llama_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE with bos/eos but no pad token, like most decoder tokenizers."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=MAX_POSITIONS, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
    )


def tiny_bert_config(num_layers: int = 4) -> BertConfig:
    return BertConfig(
        vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, num_hidden_layers=num_layers, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=MAX_POSITIONS, pad_token_id=0,
    )


def tiny_llama_config(num_layers: int = 4) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, num_hidden_layers=num_layers, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=MAX_POSITIONS,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=True,
    )


def tiny_bert_backbone(seed: int = 0, num_layers: int = 4) -> Backbone:
    """A 4-layer, hidden-32 random BERT (encoder family); the same seed gives bit-identical weights."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BertModel(tiny_bert_config(num_layers))
    return backbone_from_model(model, _bert_tokenizer(), name="tiny-bert")


def save_tiny_bert(folder: Path) -> Path:
    """The tiny BERT written as a model folder, so KB_BACKBONE can name it like any local model (even in a subprocess)."""
    if not (folder / "config.json").exists():
        backbone = tiny_bert_backbone()
        backbone.model.save_pretrained(folder)
        backbone.tokenizer.save_pretrained(folder)
    return folder


def tiny_llama_backbone(seed: int = 0, num_layers: int = 4) -> Backbone:
    """A 4-layer, hidden-32 random Llama causal LM (decoder family); the same seed gives bit-identical weights."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(tiny_llama_config(num_layers))
    return backbone_from_model(model, _llama_tokenizer(), name="tiny-llama")


def tiny_backbone(family: str, seed: int = 0, num_layers: int = 4) -> Backbone:
    return {"bert": tiny_bert_backbone, "llama": tiny_llama_backbone}[family](seed=seed, num_layers=num_layers)


def batch(backbone: Backbone, texts: list[str] | None = None) -> dict[str, torch.Tensor]:
    """A padded batch (two texts of different length by default) as input_ids + attention_mask."""
    texts = texts or ["Reset your password from the account page.", "The nightly backup failed."]
    enc = backbone.tokenizer(texts, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
