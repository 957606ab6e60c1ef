"""The searcher a web process answers with, and its hot-swap when another process changes the models or index.

A `Generation` is everything one search is answered with: the embedder whose vectors the live index holds,
that index, and the adapter versions active when it was loaded. Requests read `engine.current` once and
use that object to the end, so a swap never changes a request in flight. A background thread polls the
database every `poll_s` seconds (`kb train` promoting, `kb adapters rollback`, `kb enrich` committing a
new index build happen in other processes); when something changed it loads the new generation off the
request path and swaps it in with one assignment.

The embedder follows the live index build, not the newest active embed adapter: between `kb train`
promoting an embed adapter and `kb enrich` building its index, the live index still holds the old
adapter's vectors, so queries keep being embedded by the old adapter (retired versions stay on disk).
The index file is only read here, never written: a web process leaves repairs to `kb enrich`.

Each generation gets its own copy of the backbone: an AdapterSet owns the backbone it is installed on
(installing another closes the first), and requests in flight must keep theirs.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kb_pipeline.backbone.adapters import AdapterSet
from kb_pipeline.backbone.loading import Backbone, load_backbone
from kb_pipeline.config import Settings
from kb_pipeline.enrich.shared_pass import EMBED, TaskModels
from kb_pipeline.errors import IndexCorrupt
from kb_pipeline.indexing.vector_index import VectorIndex
from kb_pipeline.search.hybrid import Searcher
from kb_pipeline.search.query_encoder import QueryEncoder
from kb_pipeline.store import index_builds
from kb_pipeline.store.db import session_factory
from kb_pipeline.store.queries import active_versions
from kb_pipeline.store.schema import AdapterVersion
from kb_pipeline.tasks.embed import EMBED_MAX_LENGTH

log = logging.getLogger("kb_pipeline.web")


class Embedder:
    """Query vectors from one AdapterSet; one call at a time (switching adapters is state on the backbone)."""

    def __init__(self, models: TaskModels) -> None:
        self.models = models
        self._lock = threading.Lock()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            return self.models.embed(texts)


@dataclass(frozen=True)
class Generation:
    searcher: Searcher
    build_id: int | None  # the live index build answering dense search (None: none yet, keyword only)
    embed_key: str | None
    adapters: dict[str, int] = field(default_factory=dict)  # task -> active version when loaded
    loaded_at: float = field(default_factory=time.time)
    problem: str | None = None  # why dense search is unavailable, if it is

    @property
    def dense(self) -> bool:
        return self.searcher.index is not None and self.searcher.embed is not None

    @property
    def embed_version(self) -> int | None:
        key = self.embed_key or ""
        return int(key.split(":", 1)[1]) if key.startswith("adapter:") else None

    def versions(self) -> dict:
        """What answered: the adapter versions, the embedder and the index build (in every search response)."""
        return {"adapters": dict(self.adapters), "embed_key": self.embed_key, "index_build": self.build_id}


class SearchEngine:
    """Holds the current Generation and keeps it in step with the database (see the module docstring)."""

    def __init__(self, settings: Settings, backbone_loader: Callable[[], Backbone] | None = None,
                 poll_s: float = 2.0) -> None:
        self.settings = settings
        self.poll_s = poll_s
        self._loader = backbone_loader or (lambda: load_backbone(settings.backbone, settings.models_dir))
        self._pristine: Backbone | None = None
        self._current: Generation | None = None
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.swaps = 0
        self.last_error: str | None = None

    @property
    def current(self) -> Generation:
        gen = self._current
        if gen is None:
            raise RuntimeError("the search engine was not started")
        return gen

    @property
    def backbone_hash(self) -> str:
        return self._backbone().weights_hash

    def start(self, watch: bool = True) -> SearchEngine:
        """Load the first generation now (errors surface to the caller), then watch in the background."""
        self.refresh()
        if watch and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._watch, name="kb-web-hot-swap", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.refresh()
                self.last_error = None
            except Exception as exc:  # noqa: BLE001  (a database blip or a half-written file: try again next poll)
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("kb web: could not refresh the models or index (%s); still serving the previous ones",
                            self.last_error)

    def _backbone(self) -> Backbone:
        if self._pristine is None:
            self._pristine = copy.deepcopy(self._loader())  # never carries an AdapterSet: copied per generation
        return self._pristine

    def refresh(self) -> bool:
        """Compare the database with the current generation; load and swap in a new one if it changed."""
        with self._refresh_lock:
            backbone_hash = self.backbone_hash
            with session_factory(self.settings)() as session:
                live = index_builds.live_build(session)
                build = (live.id, live.embed_key, live.path, live.checksum) if live else None
                adapters = {task: v.id for task, v in active_versions(session, backbone_hash).items()}
                embed_path = None
                if build and build[1].startswith("adapter:"):
                    row = session.get(AdapterVersion, int(build[1].split(":", 1)[1]))
                    embed_path = row.path if row is not None else None
            old = self._current
            if old is not None and old.adapters == adapters and old.build_id == (build[0] if build else None):
                return False
            self._current = self._load(old, build, embed_path, adapters)
            if old is not None:
                self.swaps += 1
                log.info("kb web: now answering with %s (was %s)", self._current.versions(), old.versions())
            return True

    def _load(self, old: Generation | None, build, embed_path: str | None, adapters: dict[str, int]) -> Generation:
        if build is None:
            return Generation(Searcher(), None, None, adapters, problem="no index has been built yet: run `kb enrich`")
        build_id, embed_key, path, checksum = build
        if old is not None and old.build_id == build_id:  # only other adapters changed: same searcher
            return Generation(old.searcher, build_id, embed_key, adapters, problem=old.problem)
        try:
            index, _ = VectorIndex.load(Path(path), checksum=checksum)
        except (OSError, IndexCorrupt) as exc:  # replaced meanwhile, or damaged: `kb enrich` repairs it
            if old is not None:
                raise  # keep serving the previous generation; the next poll tries again
            return Generation(Searcher(), None, None, adapters, problem=f"the live index cannot be read: {exc}")
        if old is not None and old.embed_key == embed_key and old.searcher.embed is not None:  # a new build, same embedder
            return Generation(Searcher(old.searcher.embed, index), build_id, embed_key, adapters)
        embed, problem = self._embedder(embed_key, embed_path)
        return Generation(Searcher(embed, index if embed else None), build_id, embed_key, adapters, problem=problem)

    def _embedder(self, embed_key: str, embed_path: str | None) -> tuple[QueryEncoder | None, str | None]:
        pristine = self._backbone()
        if embed_key.startswith("backbone:"):
            if not pristine.weights_hash.startswith(embed_key.split(":", 1)[1]):
                return None, f"the index was built with another backbone ({embed_key}) than KB_BACKBONE loads"
            return self._fast(TaskModels(AdapterSet(copy.deepcopy(pristine)))), None
        if embed_path is None:
            return None, f"the index was built by {embed_key}, which is no longer registered: run `kb enrich`"
        models = TaskModels(AdapterSet(copy.deepcopy(pristine)))
        models.add(EMBED, int(embed_key.split(":", 1)[1]), embed_path)
        return self._fast(models), None

    def _fast(self, models: TaskModels) -> QueryEncoder:
        """The ONNX query encoder of these models (exported off the request path if `kb enrich` has not), torch meanwhile."""
        return QueryEncoder(models.adapters, models.embed_task, self.settings.home / "query_encoder", Embedder(models),
                            max_length=EMBED_MAX_LENGTH, background=True)
