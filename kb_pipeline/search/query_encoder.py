"""The query-encoder fast path: the embed adapter baked into a copy of the backbone, run by onnxruntime.

A search encodes one short query; through torch and the live AdapterSet (peft wrappers, adapter switching)
that costs ~10 ms on MiniLM here, through onnxruntime ~3 ms. The copy is exact: a LoRA delta (B A * scale)
is added to its base weight, which is the same linear map; a bottleneck adapter cannot be merged, so the
adapted feed-forward module is kept as is (adapter after it) and exported with the rest. The ONNX file is
keyed by what determines its outputs (backbone hash, the adapter's config and weights), written once under
KB_HOME/query_encoder/ and reused by every process. It is built on a background thread, never on a request:
until it is ready (or if onnxruntime is missing, the backbone is a decoder, or the export fails) queries go
through torch, so the fast path only ever changes latency. int8 (dynamic quantisation) is optional: it loses
cosine agreement with the torch vectors, so it is off unless asked for (benchmarks/query_encoder.py).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kb_pipeline.backbone.adapters import AdapterSet, BottleneckLayer
from kb_pipeline.backbone.heads import l2_normalize, mean_pool
from kb_pipeline.tasks.encoding import pad_id, token_limit

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the exported graph changes: the cache key carries it
OPSET = 17
THREADS = 1  # one short query: a thread team only adds hand-offs on a busy 2-core CPU
Embed = Callable[[Sequence[str]], np.ndarray]


class _Bottlenecked(nn.Module):
    """A feed-forward module followed by one task's bottleneck adapter (what BottleneckLayer does when active)."""

    def __init__(self, base: nn.Module, adapter: nn.Module):
        super().__init__()
        self.base_layer, self.adapter = base, adapter

    def forward(self, *args, **kwargs):
        out = self.base_layer(*args, **kwargs)
        if isinstance(out, tuple):
            return (self.adapter(out[0]), *out[1:])
        return self.adapter(out)


def _is_wrapper(module: nn.Module) -> bool:
    return isinstance(getattr(module, "base_layer", None), nn.Module) and hasattr(module, "adapter_layer_names")


def _resolve(module: nn.Module, task: str | None) -> nn.Module:
    """A wrapper (peft LoRA, our bottleneck, nested) replaced by a plain module computing `task`'s function."""
    if not _is_wrapper(module):
        return module
    base = _resolve(module.base_layer, task)
    if isinstance(module, BottleneckLayer):
        return _Bottlenecked(base, module.bottleneck[task]) if task in module.bottleneck else base
    lora_a = getattr(module, "lora_A", None)
    if lora_a is None or not hasattr(module, "get_delta_weight"):
        raise TypeError(f"cannot merge adapter wrapper {type(module).__name__}")
    if task in lora_a:
        with torch.no_grad():
            base.weight += module.get_delta_weight(task).to(base.weight.dtype)
    return base


def _strip(parent: nn.Module, task: str | None) -> None:
    for name, child in list(parent.named_children()):
        if _is_wrapper(child):
            setattr(parent, name, _resolve(child, task))
        else:
            _strip(child, task)


class PooledEncoder(nn.Module):
    """(input ids, attention mask) -> L2-normalised mean of the last hidden states: what `embed_texts` returns."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        return l2_normalize(mean_pool(hidden, attention_mask))  # (B, H)


def merged_encoder(adapters: AdapterSet, task: str | None) -> PooledEncoder:
    """A standalone copy of the backbone computing `task`'s embedding (None: the untuned backbone).

    LoRA deltas are merged into the copy's weights; bottlenecks stay as modules; every other task's adapter is
    dropped. The shared backbone and its AdapterSet are not changed.
    """
    if adapters.backbone.family != "encoder":
        raise TypeError("the query fast path covers encoder backbones; decoders embed through torch")
    if task is not None:
        adapters.config(task)  # KeyError for a task without an adapter
    model = copy.deepcopy(adapters.backbone.model.base_model)
    _strip(model, task)
    if hasattr(model, "peft_config"):
        del model.peft_config
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return PooledEncoder(model).eval()


def cache_key(adapters: AdapterSet, task: str | None, quantize: bool) -> str:
    """Names everything the exported outputs depend on: backbone weights, the adapter's config and tensors."""
    digest = hashlib.sha256(f"{FORMAT}|{adapters.backbone.weights_hash}|{task}|{quantize}".encode())
    if task is not None:
        digest.update(json.dumps(adapters.config(task).to_dict(), sort_keys=True).encode())
        for name, tensor in sorted(adapters.state_dict(task).items()):
            digest.update(name.encode())
            digest.update(tensor.float().numpy().tobytes())
    suffix = "-int8" if quantize else ""
    return f"{adapters.backbone.weights_hash[:12]}-{task or 'backbone'}-{digest.hexdigest()[:16]}{suffix}"


def export_onnx(encoder: PooledEncoder, tokenizer, path: Path, quantize: bool = False) -> Path:
    """Write `encoder` as ONNX to `path` (atomically: temp file, then rename); dynamic batch and length.

    Traced on a padded batch, so the graph keeps the attention mask (an all-ones example lets transformers
    drop it); int8 applies onnxruntime's dynamic quantisation to the exported float graph.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for litter in path.parent.glob(".*.tmp"):  # left by a process that exited mid-export (an hour is plenty)
        with contextlib.suppress(OSError):  # another process may remove it first
            if time.time() - litter.stat().st_mtime > 3600:
                litter.unlink()
    example = tokenizer(["a query", "a longer example query for tracing"], padding=True, return_tensors="pt")
    args = (example["input_ids"], example["attention_mask"])
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on transformers' Python branches: checked by the tests
            torch.onnx.export(
                encoder, args, str(tmp), input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                              "embedding": {0: "batch"}},
                opset_version=OPSET, dynamo=False,
            )
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            floats = tmp.with_suffix(".float.tmp")
            os.replace(tmp, floats)
            try:
                quantize_dynamic(str(floats), str(tmp), weight_type=QuantType.QInt8)
            finally:
                floats.unlink(missing_ok=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def ort_session(path: Path, threads: int = THREADS):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class QueryEncoder:
    """`embed(texts)` for search queries: onnxruntime once the exported file is ready, torch until then.

    `fallback` is the torch embedder (TaskModels.embed); `status` says which path serves and, if torch, why.
    """

    def __init__(self, adapters: AdapterSet, task: str | None, cache_dir: Path, fallback: Embed, *,
                 max_length: int | None = None, quantize: bool = False, background: bool = True, build: bool = True):
        self.fallback = fallback
        self.tokenizer = adapters.backbone.tokenizer
        self.max_length = token_limit(adapters, max_length)
        self.pad = pad_id(self.tokenizer)
        self.status = "torch: building the onnx encoder"
        self._session = None
        self._ready = threading.Event()
        self.path: Path | None = None
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            self._give_up("torch: onnxruntime is not installed")
            return
        try:
            self.path = Path(cache_dir) / f"{cache_key(adapters, task, quantize)}.onnx"
            encoder = None if self.path.exists() else merged_encoder(adapters, task)  # copied now: adapters may change
        except (TypeError, KeyError, RuntimeError, ValueError) as exc:
            self._give_up(f"torch: no onnx encoder for this backbone ({exc})")
            return
        if encoder is None:
            self._load()
        elif not build:  # a one-shot process (`kb search`) uses the file `kb enrich` exported, or torch
            self._give_up("torch: no exported onnx encoder yet (`kb enrich` exports it)")
        elif background:
            threading.Thread(target=self._build, args=(encoder, quantize), name="kb-query-encoder", daemon=True).start()
        else:
            self._build(encoder, quantize)

    def _give_up(self, why: str) -> None:
        self.status = why
        self._ready.set()

    def _build(self, encoder: PooledEncoder, quantize: bool) -> None:
        try:
            export_onnx(encoder, self.tokenizer, self.path, quantize)
        except Exception as exc:  # noqa: BLE001 (any export failure leaves torch serving; say why)
            log.warning("query encoder export failed, queries use torch: %s", exc)
            self._give_up(f"torch: onnx export failed ({exc})")
            return
        self._load()

    def _load(self) -> None:
        try:
            self._session = ort_session(self.path)
            self.status = f"onnxruntime: {self.path.name}"
        except Exception as exc:  # noqa: BLE001 (an unreadable cached file: torch keeps serving)
            self.status = f"torch: cannot load {self.path} ({exc})"
        self._ready.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the fast path is ready or given up (True unless `timeout` passed first)."""
        return self._ready.wait(timeout)

    @property
    def fast(self) -> bool:
        return self._session is not None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        session = self._session
        if session is None or not texts:
            return self.fallback(texts)
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        width = max(1, max(len(row) for row in encoded))
        ids = np.full((len(encoded), width), self.pad, dtype=np.int64)
        mask = np.zeros((len(encoded), width), dtype=np.int64)
        for i, row in enumerate(encoded):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return session.run(None, {"input_ids": ids, "attention_mask": mask})[0].astype(np.float32, copy=False)

    __call__ = embed


def query_embedder(settings, models, *, background: bool = True, quantize: bool = False, build: bool = True) -> QueryEncoder:
    """The fast query embedder for loaded TaskModels (the embed adapter in effect, torch as the fallback).

    build=False only uses an encoder exported before (by `prepare_query_encoder`), never starts an export.
    """
    from kb_pipeline.tasks.embed import EMBED_MAX_LENGTH

    return QueryEncoder(models.adapters, models.embed_task, settings.home / "query_encoder", models.embed,
                        max_length=EMBED_MAX_LENGTH, quantize=quantize, background=background, build=build)


def prepare_query_encoder(settings, models) -> str:
    """Export the query encoder of the embed adapter in effect (after `kb enrich`), off any request path.

    Encoders of other adapter versions are removed: a process already serving one keeps it in memory,
    and the next process to start finds the current one. Returns the encoder's status line.
    """
    encoder = query_embedder(settings, models, background=False)
    if encoder.path is not None and encoder.fast:
        for old in encoder.path.parent.glob("*.onnx"):
            if old != encoder.path:
                old.unlink(missing_ok=True)
    return encoder.status
