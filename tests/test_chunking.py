"""Chunking invariants (offsets, exact token counts, coverage) and boundary preferences."""

from __future__ import annotations

import random
import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kb_pipeline.backbone.loading import load_tokenizer
from kb_pipeline.backbone.tokenizer import ChunkTokenizer, chunk_tokenizer
from kb_pipeline.ingest.chunking import ChunkSpan, _splits_at_whitespace, chunk_text

WORDS = (
    "policy budget review the of and team customer quarterly release report manager onboarding "
    "café naïve résumé Zürich São Ångström 東京 数据 報告 😀 🚀 👍🏽 3.5 42 e.g. Dr. v2.1 well-known"
).split()


@pytest.fixture(scope="module")
def minilm():
    return load_tokenizer("minilm")


def _byte_level_bpe():
    """A small GPT-2/SmolLM2-style tokenizer (byte-level BPE, offsets include the leading space) trained offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=alphabet, show_progress=False)
    rng = random.Random(0)
    backend.train_from_iterator([" ".join(rng.choices(WORDS, k=40)) for _ in range(300)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def _metaspace_bpe():
    """A Llama-2-style tokenizer (sentencepiece metaspace, byte fallback) trained offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<unk>", *bytes_], show_progress=False)
    rng = random.Random(1)
    backend.train_from_iterator([" ".join(rng.choices(WORDS, k=40)) for _ in range(300)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


@pytest.fixture(scope="module")
def minilm_chunk():
    """What `kb ingest` uses: tokenizer.json through `tokenizers`, with the ASCII WordPiece route."""
    return chunk_tokenizer("minilm")


@pytest.fixture(scope="module", params=["minilm", "minilm-chunk", "byte-level", "metaspace"])
def any_tokenizer(request, minilm, minilm_chunk):
    return {
        "minilm": lambda: minilm,
        "minilm-chunk": lambda: minilm_chunk,
        "byte-level": _byte_level_bpe,
        "metaspace": _metaspace_bpe,
    }[request.param]()


def n_tokens(tokenizer, text: str) -> int:
    if isinstance(tokenizer, ChunkTokenizer):  # counted by Rust, so its ASCII route cannot vouch for itself
        return len(tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def check_invariants(source: str, chunks: list[ChunkSpan], tokenizer, max_tokens: int) -> None:
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    covered = bytearray(len(source))
    for c in chunks:
        assert c.text and c.text == source[c.char_start : c.char_end]
        assert c.text == c.text.strip()
        assert c.token_count == n_tokens(tokenizer, c.text) <= max_tokens
        covered[c.char_start : c.char_end] = b"\1" * (c.char_end - c.char_start)
    starts = [c.char_start for c in chunks]
    assert starts == sorted(set(starts))
    missed = [i for i, ch in enumerate(source) if not ch.isspace() and not covered[i]]
    assert not missed, f"uncovered chars at {missed[:10]}"


# --- property tests ------------------------------------------------------------------------------

word = st.one_of(
    st.sampled_from(WORDS),
    st.text(st.sampled_from("abcxyzéüñß東京数😀🚀-_/.0123456789"), min_size=1, max_size=14),
)
sentence = st.builds(
    lambda ws, end: " ".join(ws).capitalize() + end,
    st.lists(word, min_size=1, max_size=18),
    st.sampled_from([".", "!", "?", "", ".)", "..."]),
)
paragraph = st.lists(sentence, min_size=1, max_size=6).map(" ".join)
heading = st.builds(lambda level, s: "#" * level + " " + s, st.integers(1, 6), sentence)
bullets = st.lists(sentence.map(lambda s: "- " + s), min_size=1, max_size=5).map("\n".join)
block = st.one_of(paragraph, paragraph, heading, bullets)
document = st.lists(st.tuples(block, st.sampled_from(["\n\n", "\n\n", "\n", "\n\n\n", " \n\n  "])), max_size=12).map(
    lambda parts: "".join(b + sep for b, sep in parts)
)
sizes = st.sampled_from([(16, 0), (16, 7), (24, 5), (64, 0), (64, 20), (200, 40)])

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(text=document, size=sizes)
def test_offsets_counts_and_coverage_on_structured_text(any_tokenizer, text, size):
    max_tokens, overlap = size
    chunks = chunk_text(text, any_tokenizer, max_tokens=max_tokens, overlap_tokens=overlap)
    check_invariants(text, chunks, any_tokenizer, max_tokens)
    assert bool(chunks) == bool(text.strip())


short_heading = st.builds(
    lambda level, ws: "#" * level + " " + " ".join(ws).capitalize(),
    st.integers(1, 6),
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=4),
)
sectioned = st.lists(st.tuples(short_heading, st.lists(st.one_of(paragraph, bullets), max_size=3)), max_size=8).map(
    lambda sections: "\n\n".join("\n\n".join([h, *body]) for h, body in sections)
)
HEADING_LINE = re.compile(r"\s*#{1,6} ")


@PROPERTY
@given(text=sectioned, size=st.sampled_from([(64, 0), (64, 20), (200, 40)]))
def test_heading_is_never_the_last_line_of_a_chunk(any_tokenizer, text, size):
    max_tokens, overlap = size
    chunks = chunk_text(text, any_tokenizer, max_tokens=max_tokens, overlap_tokens=overlap)
    check_invariants(text, chunks, any_tokenizer, max_tokens)
    for c in chunks:
        lines = [line for line in c.text.splitlines() if line.strip()]
        if text[c.char_end :].strip() and not all(HEADING_LINE.match(line) for line in lines):
            assert not HEADING_LINE.match(lines[-1]), c.text


@PROPERTY
@given(text=st.text(max_size=400), size=sizes)
def test_offsets_counts_and_coverage_on_arbitrary_unicode(minilm, text, size):
    max_tokens, overlap = size
    check_invariants(text, chunk_text(text, minilm, max_tokens=max_tokens, overlap_tokens=overlap), minilm, max_tokens)


ascii_text = st.text(st.sampled_from("abcXYZ019 \t\n\r!#$[]_-.,'\"`~@^{}|\\/:;<>?*&%()+=é\x0b\x7f"), max_size=300)


@PROPERTY
@given(text=st.one_of(ascii_text, document, st.sampled_from(["[SEP] x", "a[sep]b", "[Mask]", "x" * 101 + " y"])))
def test_chunk_tokenizer_ascii_route_matches_the_rust_pipeline(minilm_chunk, text):
    rust = minilm_chunk.backend_tokenizer.encode(text, add_special_tokens=False)
    ours = minilm_chunk(text, add_special_tokens=False, return_offsets_mapping=True)
    assert (ours["input_ids"], ours["offset_mapping"]) == (rust.ids, rust.offsets)


def test_whole_text_counts_only_for_tokenizers_that_split_at_whitespace(minilm, minilm_chunk):
    assert _splits_at_whitespace(minilm) and _splits_at_whitespace(minilm_chunk)
    assert not _splits_at_whitespace(_byte_level_bpe()) and not _splits_at_whitespace(_metaspace_bpe())


@PROPERTY
@given(text=st.text(max_size=400), size=sizes)
def test_offsets_counts_and_coverage_on_arbitrary_unicode_chunk_tokenizer(minilm_chunk, text, size):
    max_tokens, overlap = size
    chunks = chunk_text(text, minilm_chunk, max_tokens=max_tokens, overlap_tokens=overlap)
    check_invariants(text, chunks, minilm_chunk, max_tokens)


char_sizes = st.sampled_from([(16, 0, 16), (24, 5, 40), (64, 20, 100), (200, 40, 300)])


@PROPERTY
@given(
    text=st.one_of(document, st.text(max_size=400), st.text(st.sampled_from("ab東😀 _."), max_size=600)),
    size=char_sizes,
)
def test_chunks_never_exceed_the_character_bound(any_tokenizer, text, size):
    max_tokens, overlap, max_chars = size
    chunks = chunk_text(text, any_tokenizer, max_tokens=max_tokens, overlap_tokens=overlap, max_chars=max_chars)
    check_invariants(text, chunks, any_tokenizer, max_tokens)
    assert all(len(c.text) <= max_chars for c in chunks)


def test_a_huge_single_token_is_hard_split_with_right_offsets(minilm, minilm_chunk):
    """WordPiece makes one [UNK] of a word over 100 characters: a 1 MB run was one 1 MB chunk."""
    for tokenizer in (minilm, minilm_chunk):
        text = "Intro words here.\n\n" + "x" * 1_000_000 + " tail"
        began = time.perf_counter()
        chunks = chunk_text(text, tokenizer)  # default bound: 20 characters per token of budget
        assert time.perf_counter() - began < 10
        check_invariants(text, chunks, tokenizer, 200)
        assert max(len(c.text) for c in chunks) == 4000
        assert chunks[0].text == "Intro words here." and chunks[-1].text == "tail"
        assert "".join(c.text for c in chunks[1:-1]) == "x" * 1_000_000


def test_long_words_are_cut_between_words_to_respect_the_character_bound(minilm):
    text = " ".join(("abc" * 30)[: 60 + i % 30] for i in range(400))  # 100-char words of many tokens each
    chunks = chunk_text(text, minilm, max_tokens=200, overlap_tokens=0, max_chars=1000)
    check_invariants(text, chunks, minilm, 200)
    assert all(len(c.text) <= 1000 for c in chunks)
    assert all(c.char_end == len(text) or text[c.char_end] == " " for c in chunks)  # no hard split needed


def test_hard_split_pieces_end_at_the_last_whitespace_in_reach():
    from kb_pipeline.ingest.chunking import _hard_pieces

    text = "aaaa bbbb cccccccccccc dd"
    assert list(_hard_pieces(text, 0, len(text), 10)) == [(0, 9), (10, 20), (20, 25)]


# --- boundary preferences ------------------------------------------------------------------------


def prose(rng: random.Random, n_sentences: int) -> str:
    vocab = "data team review budget plan policy report quarter sales product launch risk owner".split()
    return " ".join(
        " ".join(rng.choices(vocab, k=rng.randint(6, 14))).capitalize() + rng.choice(".!?") for _ in range(n_sentences)
    )


def test_empty_and_blank_text(minilm):
    assert chunk_text("", minilm) == []
    assert chunk_text(" \n\n\t ", minilm) == []


def test_short_text_is_one_chunk(minilm):
    text = "\n  Hello world. This is short.  \n"
    (chunk,) = chunk_text(text, minilm)
    assert chunk.text == "Hello world. This is short."
    assert (chunk.char_start, chunk.char_end) == (3, 30)


def test_sections_start_new_chunks(minilm):
    rng = random.Random(3)
    sections = [f"## Section {i}\n\n{prose(rng, 4)}\n\n{prose(rng, 3)}" for i in range(3)]
    text = "\n\n".join(sections)
    assert all(60 < n_tokens(minilm, s) < 150 for s in sections)
    chunks = chunk_text(text, minilm, max_tokens=200, overlap_tokens=40)
    check_invariants(text, chunks, minilm, 200)
    assert [c.text for c in chunks] == sections


def test_tiny_sections_are_merged_and_headings_never_end_a_chunk(minilm):
    rng = random.Random(4)
    text = "\n\n".join(f"### Item {i}\n\n{prose(rng, 1)}" for i in range(40))
    chunks = chunk_text(text, minilm, max_tokens=100, overlap_tokens=20)
    check_invariants(text, chunks, minilm, 100)
    assert len(chunks) < 40
    for c in chunks:
        assert c.text.startswith("### Item"), "cuts should fall before headings"
        assert not c.text.splitlines()[-1].startswith("#")


def test_long_paragraph_splits_at_sentence_ends(minilm):
    rng = random.Random(5)
    text = prose(rng, 220)
    assert len(text.split()) > 2000
    chunks = chunk_text(text, minilm, max_tokens=200, overlap_tokens=40)
    check_invariants(text, chunks, minilm, 200)
    assert len(chunks) > 10
    for c in chunks:
        assert c.text[0].isupper() and c.text[-1] in ".!?"
    assert all(c.token_count > 100 for c in chunks[:-1])  # not needlessly small


def test_abbreviations_and_decimals_are_not_sentence_ends(minilm):
    filler = " ".join(["Plain words here without any ending at all"] * 6)
    text = f"{filler} e.g. Dr. Smith paid 3.5 dollars for U.S. Steel shares. {filler}."
    chunks = chunk_text(text, minilm, max_tokens=40, overlap_tokens=0)
    check_invariants(text, chunks, minilm, 40)
    for cut in (c.char_end for c in chunks[:-1]):
        assert text[cut - 4 : cut] not in ("e.g.", " Dr.", " 3.5", "U.S.")


def test_unbroken_run_splits_at_token_boundaries(minilm):
    run = "".join(f"seg{i}_" for i in range(800))[:5000]  # no whitespace; '_' splits BERT tokens
    text = f"Intro sentence here.\n\n{run}\n\nOutro."
    chunks = chunk_text(text, minilm, max_tokens=64, overlap_tokens=0)
    check_invariants(text, chunks, minilm, 64)
    offsets = minilm(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
    boundaries = {s for s, _ in offsets} | {e for _, e in offsets}
    assert all(c.char_start in boundaries and c.char_end in boundaries for c in chunks)
    assert chunks[0].text == "Intro sentence here."  # the run starts its own chunk
    assert len(chunks) > 5 and all(c.text in run for c in chunks[1:-1])
    assert all(not text[a.char_end : b.char_start].strip() for a, b in zip(chunks, chunks[1:]))


def test_unbroken_run_with_byte_level_tokenizer():
    tokenizer = _byte_level_bpe()
    run = "".join(random.Random(6).choices("abcdefghijklmnopqrstuvwxyz東京😀", k=5000))
    chunks = chunk_text(run, tokenizer, max_tokens=32, overlap_tokens=0)
    check_invariants(run, chunks, tokenizer, 32)
    assert "".join(c.text for c in chunks) == run


@pytest.mark.parametrize("overlap", [0, 10, 40])
def test_overlap(minilm, overlap):
    rng = random.Random(7)
    text = "\n\n".join(prose(rng, 3) for _ in range(30))
    chunks = chunk_text(text, minilm, max_tokens=120, overlap_tokens=overlap)
    check_invariants(text, chunks, minilm, 120)
    for prev, nxt in zip(chunks, chunks[1:]):
        shared = text[nxt.char_start : prev.char_end]
        if overlap == 0:
            assert nxt.char_start >= prev.char_end
        else:
            assert 0 < n_tokens(minilm, shared) <= overlap + 2
            assert text[nxt.char_start - 1].isspace()  # never starts mid-word
            if overlap == 40:  # sentences are shorter than the window: snapped to a sentence start
                assert re.match(r"[A-Z]", shared)


def test_no_overlap_across_heading_cut(minilm):
    rng = random.Random(8)
    text = f"# One\n\n{prose(rng, 6)}\n\n# Two\n\n{prose(rng, 6)}"
    chunks = chunk_text(text, minilm, max_tokens=200, overlap_tokens=40)
    two = next(c for c in chunks if c.text.startswith("# Two"))
    assert chunks[two.ordinal - 1].char_end < two.char_start


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_tokens": 15}, "max_tokens"),
        ({"max_tokens": 100, "overlap_tokens": 50}, "overlap_tokens"),
        ({"overlap_tokens": -1}, "overlap_tokens"),
        ({"max_chars": 15}, "max_chars"),
    ],
)
def test_bad_arguments(minilm, kwargs, name):
    with pytest.raises(ValueError, match=name):
        chunk_text("some text", minilm, **kwargs)


def test_speed_sanity(minilm):
    """Chunking is linear in the text: 10x the text takes about 10x the time, not 100x, and a book-sized
    text (~150k characters) chunks in seconds even on a busy CI machine."""
    rng = random.Random(9)
    parts = [f"## Part {i}\n\n{prose(rng, 5)}\n\n{prose(rng, 8)}" for i in range(300)]

    def timed(text: str) -> tuple[float, list[ChunkSpan]]:
        best, chunks = float("inf"), []
        for _ in range(2):  # the faster of two runs: less noise from other processes
            began = time.perf_counter()
            chunks = chunk_text(text, minilm)
            best = min(best, time.perf_counter() - began)
        return best, chunks

    small_text, text = "\n\n".join(parts[:30]), "\n\n".join(parts)
    small_seconds, small = timed(small_text)
    seconds, chunks = timed(text)
    print(f"\nchunked {len(text):,} chars into {len(chunks)} chunks in {seconds:.2f}s ({small_seconds:.3f}s for 1/10)")
    check_invariants(text, chunks, minilm, 200)
    assert len(chunks) >= 10 * len(small) * 0.8  # the same kind of text: about ten times the chunks
    assert seconds < 20, f"{seconds:.1f}s to chunk {len(text):,} characters"
    superlinear = f"superlinear: {small_seconds:.3f}s for a tenth of the text, {seconds:.2f}s for all of it"
    assert seconds < 30 * max(small_seconds, 0.01), superlinear
