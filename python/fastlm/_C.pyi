"""Type stub of the private native module fastlm._C (use the fastlm package API)."""

__version__: str

# -- classifier area (csrc/classify, csrc/bindings/classifier.cpp) ---------------------------------
import numpy as np
from typing import Sequence

def classify_tokenize(text: str) -> list[str]:
    """Lowercased words of a text (Unicode-aware word boundaries)."""

def classify_featurize(texts: Sequence[str], buckets: int, word_ngrams: int, char_min: int, char_max: int,
                       num_threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Feature ids of each text as CSR: (offsets uint64 [n+1], ids uint32)."""

def classify_train(texts: Sequence[str], labels: np.ndarray, num_classes: int, buckets: int, word_ngrams: int,
                   char_min: int, char_max: int, epochs: int, lr: float, l2: float, seed: int,
                   num_threads: int = 1) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """AdaGrad training: (weights float32 [buckets, k], bias float32 [k], mean loss per epoch)."""

def classify_predict_proba(texts: Sequence[str], weights: np.ndarray, bias: np.ndarray, word_ngrams: int,
                           char_min: int, char_max: int, num_threads: int = 0) -> np.ndarray:
    """Class probabilities float32 [n, k]."""

class Lexicon:
    """Word/phrase lexicon matched on Unicode word boundaries."""
    def __init__(self, phrases: Sequence[str]) -> None: ...
    @property
    def size(self) -> int: ...
    @property
    def max_words(self) -> int: ...
    def count(self, texts: Sequence[str], num_threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(hits int64 [n], words int64 [n])."""

# -- text area (csrc/text, csrc/bindings/text.cpp) ------------------------------------------------
import numpy as np
from typing import Sequence

def text_scan_triggers(texts: Sequence[str], bitmap: bytes, num_threads: int = 0) -> list[bool]:
    """For each text: True if it holds a code point whose bit is set in `bitmap` (0x110000/8 bytes)."""

def text_clean(texts: Sequence[str], *, remove_control: bool, whitespace: bool, keep_indentation: bool,
               max_blank_lines: int, num_threads: int = 0) -> list[str]:
    """Control-character removal and whitespace normalization (reference: tests/reference_text.py)."""

def text_repetition_stats(texts: Sequence[str], *, strip: Sequence[int], top_ns: Sequence[int],
                          dup_ns: Sequence[int], num_threads: int = 0) -> np.ndarray:
    """Gopher repetition counts, int64 [n, 7 + len(top_ns) + len(dup_ns)] (layout: csrc/text/repetition.h)."""

# ---- dedup (csrc/dedup, csrc/bindings/dedup.cpp); public API: fastlm.data.dedup ----
import numpy as _np
from typing import Sequence as _Seq

DEDUP_NORMALIZATION_VERSION: int
def dedup_set_simd(max_level: int) -> int: ...
def dedup_kernel() -> str: ...
def dedup_normalize(text: str | bytes) -> bytes: ...
def dedup_shingle_hashes(text: str | bytes, ngram: int, mode: int) -> _np.ndarray: ...
def dedup_exact_hashes(texts: _Seq[str | bytes], num_threads: int) -> _np.ndarray: ...
class DedupShingleHashes:
    """Opaque: the 32-bit shingle hashes kept by dedup_minhash(keep=True) for exact checks."""
    def __len__(self) -> int: ...
def dedup_minhash(texts: _Seq[str | bytes], a: _np.ndarray, b: _np.ndarray, ngram: int, mode: int,
                  num_threads: int, keep: bool = False) -> tuple: ...
    # (signatures, counts), or with keep=True (signatures, counts, DedupShingleHashes)
def dedup_band_keys(sig: _np.ndarray, bands: int, rows: int, num_threads: int) -> _np.ndarray: ...
def dedup_lsh_cluster(keys: _np.ndarray, sig: _np.ndarray, counts: _np.ndarray, lengths: _np.ndarray,
                      threshold: float, verify: int, margin: float,
                      texts: _Seq[str | bytes] | DedupShingleHashes | None, ngram: int,
                      max_compare: int, keep_longest: bool,
                      num_threads: int) -> tuple[_np.ndarray, _np.ndarray, dict]: ...
def dedup_simhash(texts: _Seq[str | bytes], ngram: int, num_threads: int) -> tuple[_np.ndarray, _np.ndarray]: ...
def dedup_simhash_cluster(fps: _np.ndarray, counts: _np.ndarray, lengths: _np.ndarray, k: int,
                          max_compare: int, keep_longest: bool,
                          num_threads: int) -> tuple[_np.ndarray, _np.ndarray, dict]: ...

def cross_entropy_chunk(logits, target, loss, lse, grad_scale, grad_scale_scalar: float,
                        ignore_index: int, label_smoothing: float, z_loss: float, softcap: float,
                        write_grad: bool, num_threads: int) -> None: ...

# -- tokenizer bpe area (csrc/tokenizer/bpe_*, csrc/bindings/bpe.cpp); reference: tests/reference_bpe.py --
import numpy as np
from typing import Callable, Sequence

def bpe_train(pieces: Sequence[bytes], counts: np.ndarray, vocab_size: int, min_frequency: int,
              progress: Callable[[int], None] | None = None, progress_every: int = 0) -> np.ndarray:
    """Merges int32 [m, 2] (token 256 + i = left + right), m <= vocab_size - 256; counts uint64 [n].
    Highest count first, ties -> smallest (left, right); stops when the best count < min_frequency.
    progress(merges_done) is called with the GIL held every progress_every merges."""

class BpeEncoder:
    """tiktoken's BPE rule over tokens[rank] (must hold all 256 single bytes; no duplicates or empty tokens)."""
    def __init__(self, tokens: Sequence[bytes]) -> None: ...
    @property
    def num_tokens(self) -> int: ...
    def encode_pieces(self, pieces: Sequence[bytes]) -> np.ndarray:
        """Concatenated ids (uint32) of the pre-tokenized pieces."""
    def encode_pieces_batch(self, batch: Sequence[Sequence[bytes]], num_threads: int = 0) -> list[np.ndarray]:
        """encode_pieces of each list, in parallel."""
    def decode(self, ids: np.ndarray | Sequence[int]) -> bytes:
        """Concatenated bytes; ValueError names an id out of [0, num_tokens)."""

# -- tokenizer pre-tokenizer (csrc/tokenizer/pretokenize.cpp, piece_counts.cpp; csrc/bindings/pretokenize.cpp) --
import numpy as _np
from typing import Sequence as _Seq

TOK_UNICODE_VERSION: str  # Unicode version of the generated class tables
def tok_pretokenize(texts: list[str | bytes], pattern: int, num_threads: int = 0) -> list[list[str | bytes]]:
    """Pieces of each text (pattern 0 gpt2, 1 gpt4, 2 o200k), identical to regex.findall with the published
    pattern; str in -> str pieces (lone surrogates kept), bytes in -> bytes pieces (invalid bytes: 1-byte "other")."""
def tok_count_pieces(texts: list[str | bytes], pattern: int, num_threads: int = 0) -> tuple[list[bytes], _np.ndarray]:
    """Distinct pieces of all texts as UTF-8 bytes (sorted by bytes) and their counts (uint64)."""
def tok_unicode_flags() -> bytes:
    """Class flag byte of every code point (bits in csrc/tokenizer/unicode_tables.h), for tests."""
