"""Model-based document filters: a fast native linear text classifier, and a detoxify backend.

``TextClassifier`` is a fastText-style linear softmax classifier (no hidden layer) over hashed
word n-grams and character n-grams (see csrc/classify/features.h for the exact features),
trained natively with AdaGrad. Train it on your own labeled data for toxicity ("toxic" vs
"ok") or for quality (e.g. "low_quality" vs "high_quality", or web text vs reference text as in
GPT-3 / FineWeb-Edu style quality filtering), save it, and apply it with ``ClassifierFilter``
and a probability threshold. ``DetoxifyFilter`` uses the pretrained ``detoxify`` models
when that package and its weights are present locally.

File format (``.fastlm-cls``, version 1), all little-endian::

    b"FASTLMCL" | uint32 header_bytes | header (UTF-8 JSON) | float32 weights[buckets, k] | float32 bias[k]

The header holds the format name and version, the feature config, the labels (strings or
ints, in class order), the training options, the payload size and its CRC-32.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import struct
import zlib
from typing import Any, Optional, Sequence, Union

import numpy as np

from fastlm.data.filter_base import DocFilter
from fastlm.data.records import check_num_threads

MAGIC = b"FASTLMCL"
FORMAT = "fastlm-text-classifier"
VERSION = 1

Label = Union[str, int]

_INT32_MAX = 2**31 - 1
_F32 = np.finfo(np.float32)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _as_float32(v: float) -> float:
    """v as the native trainer receives it (float32): tiny values round to 0, huge ones to inf."""
    with np.errstate(over="ignore"):
        return float(np.float32(v))


@dataclasses.dataclass
class ClassifierConfig:
    """Features and training options of a TextClassifier."""

    buckets: int = 2**20  # hashed feature space: 8 MB of float32 weights for 2 classes, few collisions
    word_ngrams: int = 2  # word uni+bigrams: fastText's text-classification setting
    char_ngrams: Optional[tuple[int, int]] = (3, 5)  # char n-grams within "<word>": robust to spelling
    epochs: int = 5  # fastText's default; AdaGrad converges fast on sparse features
    lr: float = 0.2  # AdaGrad base step per weight
    l2: float = 0.0  # L2 penalty; 0 like fastText (averaging over features already regularizes)
    seed: int = 0  # example order in each epoch (deterministic with num_threads=1)

    def validate(self) -> None:
        for name in ("buckets", "word_ngrams", "epochs", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if not 1 <= self.buckets <= 2**32:
            raise ValueError(f"buckets must be in [1, 2**32], got {self.buckets}")
        if not 0 <= self.word_ngrams <= 16:
            raise ValueError(f"word_ngrams must be in [0, 16], got {self.word_ngrams}")
        if self.char_ngrams is not None:
            cn = self.char_ngrams
            if (not isinstance(cn, (tuple, list)) or len(cn) != 2
                    or not all(isinstance(x, int) and not isinstance(x, bool) for x in cn)):
                raise TypeError(f"char_ngrams must be a (min, max) pair of ints or None, got {cn!r}")
            if not 1 <= cn[0] <= cn[1] <= 32:
                raise ValueError(f"char_ngrams must satisfy 1 <= min <= max <= 32, got {tuple(cn)}")
        if self.word_ngrams == 0 and self.char_ngrams is None:
            raise ValueError("no features: set word_ngrams >= 1 or char_ngrams")
        if not 0 <= self.epochs <= _INT32_MAX:  # the native loop counts epochs in an int32
            raise ValueError(f"epochs must be in [0, 2**31 - 1], got {self.epochs}")
        # lr and l2 reach the native trainer as float32, which refuses an lr that rounds to 0 and
        # an lr or l2 that overflows to inf: check them here, by name, before any data is read.
        if not (_is_real(self.lr) and self.lr > 0 and 0 < _as_float32(self.lr) < np.inf):
            raise ValueError(f"lr must be a positive number within float32 range "
                             f"(about 1.4e-45 to {float(_F32.max):.3g}), got {self.lr!r}")
        if not (_is_real(self.l2) and self.l2 >= 0 and _as_float32(self.l2) < np.inf):
            raise ValueError(f"l2 must be a number >= 0 and at most {float(_F32.max):.3g} (float32), got {self.l2!r}")
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {self.seed}")

    @property
    def char_range(self) -> tuple[int, int]:
        return tuple(self.char_ngrams) if self.char_ngrams is not None else (0, 0)


def _check_texts(texts: Any) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a list of str, not a single string (wrap it in a list)")
    if not isinstance(texts, (list, tuple)):
        texts = list(texts)
    return texts


def _check_labels(labels: Sequence[Label]) -> list[Label]:
    out = list(labels)
    for i, y in enumerate(out):
        if isinstance(y, bool) or not isinstance(y, (str, int, np.integer)):
            raise TypeError(f"labels[{i}] must be str or int, got {type(y).__name__}")
    if any(isinstance(y, str) for y in out) and not all(isinstance(y, str) for y in out):
        raise TypeError("labels must be all str or all int, not a mix")
    return [y if isinstance(y, str) else int(y) for y in out]


class TextClassifier:
    """Linear softmax classifier over hashed word and character n-grams (native, fastText-like).

    >>> texts = ["you are awful", "have a nice day", "awful awful person", "nice to meet you"]
    >>> clf = TextClassifier.train(texts, ["toxic", "ok", "toxic", "ok"], buckets=2**12, epochs=20)
    >>> clf.predict(["what an awful thing", "a nice thing"])
    ['toxic', 'ok']
    """

    def __init__(self, weights: np.ndarray, bias: np.ndarray, labels: Sequence[Label],
                 config: ClassifierConfig, train_losses: Optional[list[float]] = None):
        config.validate()
        labels = _check_labels(labels)
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError(f"labels must be at least 2 distinct values, got {labels!r}")
        weights = np.ascontiguousarray(weights, dtype=np.float32)
        bias = np.ascontiguousarray(bias, dtype=np.float32)
        if weights.shape != (config.buckets, len(labels)) or bias.shape != (len(labels),):
            raise ValueError(f"weights must be [{config.buckets}, {len(labels)}] and bias [{len(labels)}], "
                             f"got {weights.shape} and {bias.shape}")
        self.weights, self.bias, self.labels, self.config = weights, bias, labels, config
        self.train_losses = list(train_losses or [])

    # -- training and prediction ---------------------------------------------------------------

    @classmethod
    def train(cls, texts: Sequence[str], labels: Sequence[Label], *, buckets: int = 2**20,
              word_ngrams: int = 2, char_ngrams: Optional[tuple[int, int]] = (3, 5), epochs: int = 5,
              lr: float = 0.2, l2: float = 0.0, seed: int = 0, num_threads: int = 1) -> "TextClassifier":
        """Train on texts and their labels (str or int; classes are the sorted distinct labels).

        num_threads=1 (default) is deterministic for a given seed; more threads train hogwild
        style (lock-free, faster, not reproducible bit for bit).

        >>> clf = TextClassifier.train(["good", "bad"] * 4, [1, 0] * 4, buckets=256, epochs=5)
        >>> clf.labels
        [0, 1]
        """
        from fastlm import _C

        config = ClassifierConfig(buckets=buckets, word_ngrams=word_ngrams, char_ngrams=char_ngrams,
                                  epochs=epochs, lr=lr, l2=l2, seed=seed)
        config.validate()
        config.char_ngrams = tuple(char_ngrams) if char_ngrams is not None else None
        config.lr, config.l2 = float(lr), float(l2)
        texts = _check_texts(texts)
        labels = _check_labels(labels)
        if len(texts) != len(labels):
            raise ValueError(f"got {len(texts)} texts but {len(labels)} labels")
        classes = sorted(set(labels))
        if len(classes) < 2:
            raise ValueError(f"need at least 2 distinct labels to train, got {classes!r}")
        check_num_threads(num_threads)
        index = {c: i for i, c in enumerate(classes)}
        y = np.fromiter((index[v] for v in labels), dtype=np.int32, count=len(labels))
        cmin, cmax = config.char_range
        try:
            weights, bias, losses = _C.classify_train(
                texts, y, len(classes), config.buckets, config.word_ngrams, cmin, cmax,
                config.epochs, config.lr, config.l2, config.seed, int(num_threads))
        except MemoryError:  # weights and AdaGrad state: 2 float32 per bucket and class
            gib = 8 * config.buckets * len(classes) / 2**30
            raise ValueError(f"buckets={config.buckets} with {len(classes)} classes needs {gib:.1f} GiB for the "
                             "weights and their AdaGrad state, more than could be allocated; lower buckets") from None
        # A too large lr (or l2) overflows float32 weights to inf and then NaN: such a model would
        # give NaN probabilities, which every threshold comparison silently treats as "keep".
        if not (np.isfinite(weights).all() and np.isfinite(bias).all()):
            raise ValueError(f"training diverged (weights overflowed float32 to inf/NaN) with lr={config.lr}, "
                             f"l2={config.l2}; lower lr")
        return cls(weights, bias, classes, config, losses)

    def predict_proba(self, texts: Sequence[str], *, num_threads: int = 0) -> np.ndarray:
        """Class probabilities, float32 [len(texts), len(self.labels)] (columns follow self.labels).

        Native, in parallel, with the GIL released (num_threads=0: all cores).
        """
        from fastlm import _C

        texts = _check_texts(texts)
        check_num_threads(num_threads)
        cmin, cmax = self.config.char_range
        return _C.classify_predict_proba(texts, self.weights, self.bias, self.config.word_ngrams,
                                         cmin, cmax, int(num_threads))

    def predict(self, texts: Sequence[str], *, num_threads: int = 0) -> list[Label]:
        """Most probable label of each text."""
        proba = self.predict_proba(texts, num_threads=num_threads)
        return [self.labels[i] for i in proba.argmax(axis=1)] if len(proba) else []

    def evaluate(self, texts: Sequence[str], labels: Sequence[Label], *, num_threads: int = 0) -> dict:
        """Accuracy and per-class precision/recall/support on labeled texts.

        >>> clf = TextClassifier.train(["good", "bad"] * 4, ["pos", "neg"] * 4, buckets=256)
        >>> clf.evaluate(["good", "bad"], ["pos", "neg"])["accuracy"]
        1.0
        """
        labels = _check_labels(labels)
        pred = self.predict(texts, num_threads=num_threads)
        if len(pred) != len(labels):
            raise ValueError(f"got {len(pred)} texts but {len(labels)} labels")
        n = len(labels)
        per_class = {}
        for c in self.labels:
            tp = sum(1 for p, y in zip(pred, labels) if p == c and y == c)
            npred = sum(1 for p in pred if p == c)
            support = sum(1 for y in labels if y == c)
            per_class[c] = {"precision": tp / npred if npred else 0.0,
                            "recall": tp / support if support else 0.0, "support": support}
        correct = sum(1 for p, y in zip(pred, labels) if p == y)
        return {"n": n, "accuracy": correct / n if n else 0.0, "per_class": per_class}

    # -- files -----------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the model atomically (temp file + rename) in the versioned .fastlm-cls format."""
        payload_w = self.weights.astype("<f4", copy=False).tobytes()
        payload_b = self.bias.astype("<f4", copy=False).tobytes()
        crc = zlib.crc32(payload_b, zlib.crc32(payload_w))
        c = self.config
        header = {
            "format": FORMAT, "version": VERSION, "labels": self.labels,
            "config": {"buckets": c.buckets, "word_ngrams": c.word_ngrams,
                       "char_ngrams": list(c.char_ngrams) if c.char_ngrams is not None else None},
            "train": {"epochs": c.epochs, "lr": c.lr, "l2": c.l2, "seed": c.seed,
                      "losses": self.train_losses},
            "payload_bytes": len(payload_w) + len(payload_b), "crc32": crc,
        }
        hbytes = json.dumps(header).encode("utf-8")
        from fastlm.data.io import atomic_write

        with atomic_write(os.fspath(path), "wb") as f:
            f.write(MAGIC + struct.pack("<I", len(hbytes)) + hbytes)
            f.write(payload_w)
            f.write(payload_b)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TextClassifier":
        """Read a model written by save(); a wrong or damaged file raises ValueError naming it.

        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "m.fastlm-cls")
        >>> TextClassifier.train(["a", "b"], ["x", "y"], buckets=64).save(p)
        >>> TextClassifier.load(p).labels
        ['x', 'y']
        """
        path = os.fspath(path)
        with open(path, "rb") as f:
            data = f.read()

        def bad(what: str) -> ValueError:
            return ValueError(f"{path}: not a valid fastlm classifier file: {what}")

        if data[: len(MAGIC)] != MAGIC:
            raise bad(f"missing the {MAGIC.decode()} signature (not a .fastlm-cls file?)")
        if len(data) < len(MAGIC) + 4:
            raise bad(f"truncated after the signature ({len(data)} bytes)")
        (hlen,) = struct.unpack_from("<I", data, len(MAGIC))
        start = len(MAGIC) + 4
        if start + hlen > len(data):
            raise bad(f"truncated header ({hlen} bytes announced, {len(data) - start} present)")
        try:
            header = json.loads(data[start : start + hlen].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise bad(f"corrupt JSON header ({e})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise bad(f"header format is {header.get('format') if isinstance(header, dict) else header!r}, "
                      f"expected {FORMAT!r}")
        if header.get("version") != VERSION:
            raise bad(f"format version {header.get('version')!r} is not supported (this fastlm reads version "
                      f"{VERSION}; retrain or use the fastlm that wrote it)")
        try:
            cfg = header["config"]
            train = header.get("train", {})
            if not isinstance(train, dict):
                raise TypeError(f"'train' must be an object, got {type(train).__name__}")
            losses = train.get("losses") or []
            if not isinstance(losses, list) or not all(_is_real(x) for x in losses):
                raise TypeError(f"'train.losses' must be a list of numbers, got {losses!r:.60}")
            if not isinstance(header["labels"], list):  # list("ab") would read as the labels a, b
                raise TypeError(f"'labels' must be a list, got {type(header['labels']).__name__}")
            config = ClassifierConfig(
                buckets=cfg["buckets"], word_ngrams=cfg["word_ngrams"],
                char_ngrams=tuple(cfg["char_ngrams"]) if cfg["char_ngrams"] is not None else None,
                epochs=train.get("epochs", 0), lr=train.get("lr", 0.2), l2=train.get("l2", 0.0),
                seed=train.get("seed", 0))
            config.validate()
            labels = _check_labels(header["labels"])
            k = len(labels)
            if k < 2 or len(set(labels)) != k:
                raise ValueError(f"labels must be at least 2 distinct values, got {labels!r}")
            payload_bytes, crc = header["payload_bytes"], header["crc32"]
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (payload_bytes, crc)):
                raise TypeError(f"'payload_bytes' and 'crc32' must be integers, got {payload_bytes!r}, {crc!r}")
        except (KeyError, TypeError, ValueError) as e:
            raise bad(f"bad header field ({type(e).__name__}: {e})") from None
        expected = 4 * (config.buckets * k + k)
        payload = memoryview(data)[start + hlen :]
        if payload_bytes != expected or len(payload) != expected:
            raise bad(f"weights are {len(payload)} bytes, expected {expected} "
                      f"({config.buckets} buckets x {k} classes + bias, float32): truncated or damaged")
        if zlib.crc32(payload) != crc:
            raise bad("weights checksum mismatch (file damaged)")
        arr = np.frombuffer(payload, dtype="<f4")
        weights = arr[: config.buckets * k].reshape(config.buckets, k).astype(np.float32)
        bias = arr[config.buckets * k :].astype(np.float32)
        if not (np.isfinite(weights).all() and np.isfinite(bias).all()):  # NaN probabilities otherwise
            raise bad("weights hold NaN or infinity (a diverged training run?)")
        return cls(weights, bias, labels, config, losses)


class ScoreFilter(DocFilter):
    """A filter over a per-document score: rejects with ``self.reason`` when score >= threshold."""

    reason: str
    threshold: float

    def scores(self, texts: Sequence[str]) -> Sequence[float]:
        """One score per text (subclasses)."""
        raise NotImplementedError

    def check(self, text: str) -> Optional[str]:
        if not isinstance(text, str):
            raise TypeError(f"text must be str, not {type(text).__name__}")
        return self.check_batch([text])[0]

    def check_batch(self, texts: Sequence[str]) -> list[Optional[str]]:
        return [self.reason if s >= self.threshold else None for s in self.scores(texts)]


class ClassifierFilter(ScoreFilter):
    """Reject documents whose probability of ``label`` is >= threshold (reason "classifier:<label>").

    Works for toxicity (label "toxic") and quality (label "low_quality") models alike.

    >>> clf = TextClassifier.train(["spam spam buy now", "a calm essay"] * 4, ["spam", "ok"] * 4, buckets=256)
    >>> ClassifierFilter(clf, label="spam").check_batch(["buy spam now", "an essay"])
    ['classifier:spam', None]
    """

    name = "classifier"

    def __init__(self, model: Union[TextClassifier, str, os.PathLike], *, label: Label = "toxic",
                 threshold: float = 0.5, num_threads: int = 0):
        if isinstance(model, (str, os.PathLike)):
            model = TextClassifier.load(model)
        if not isinstance(model, TextClassifier):
            raise TypeError(f"model must be a TextClassifier or a path, not {type(model).__name__}")
        if label not in model.labels:
            raise ValueError(f"label {label!r} is not one of the model's labels {model.labels!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
        self.model, self.label, self.threshold, self.num_threads = model, label, float(threshold), num_threads
        self._column = model.labels.index(label)
        self.reason = f"classifier:{label}"

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """Probability of the filter's label for each text."""
        return self.model.predict_proba(texts, num_threads=self.num_threads)[:, self._column]



# -- detoxify backend ----------------------------------------------------------------------------

# detoxify's checkpoints (detoxify/detoxify.py MODEL_URLS); torch.hub caches them under
# <hub dir>/checkpoints/<file name>.
DETOXIFY_URLS = {
    "original": "https://github.com/unitaryai/detoxify/releases/download/v0.1-alpha/toxic_original-c1212f89.ckpt",
    "unbiased": "https://github.com/unitaryai/detoxify/releases/download/v0.3-alpha/toxic_debiased-c7548aa0.ckpt",
    "multilingual": "https://github.com/unitaryai/detoxify/releases/download/v0.4-alpha/multilingual_debiased-0b549669.ckpt",
    "original-small": "https://github.com/unitaryai/detoxify/releases/download/v0.1.2/original-albert-0e1d6498.ckpt",
    "unbiased-small": "https://github.com/unitaryai/detoxify/releases/download/v0.1.2/unbiased-albert-c8519128.ckpt",
}


class DetoxifyUnavailableError(ImportError):
    """detoxify is not installed, or its weights are not in the local cache."""


def _module_installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _torch_hub_dir() -> str:
    """torch.hub's cache directory, as torch computes it (without importing torch if absent)."""
    if _module_installed("torch"):
        import torch.hub

        return torch.hub.get_dir()
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "torch")
    return os.path.join(os.path.expanduser(torch_home), "hub")


def detoxify_checkpoint_path(model: str) -> str:
    """Where torch.hub keeps (or would download) detoxify's checkpoint for ``model``."""
    if model not in DETOXIFY_URLS:
        raise ValueError(f"unknown detoxify model {model!r}; choose one of {sorted(DETOXIFY_URLS)}")
    return os.path.join(_torch_hub_dir(), "checkpoints", DETOXIFY_URLS[model].rsplit("/", 1)[1])


class DetoxifyFilter(ScoreFilter):
    """Reject documents whose detoxify score for ``label`` is >= threshold ("detoxify:<label>").

    Needs the optional ``detoxify`` package (which needs torch and transformers) and its
    checkpoint in the local torch hub cache: this filter never downloads. When either is
    missing, construction raises DetoxifyUnavailableError saying which and how to fix it.

    >>> DetoxifyFilter("original")  # doctest: +SKIP
    """

    name = "detoxify"

    def __init__(self, model: str = "original", *, threshold: float = 0.5, label: str = "toxicity",
                 device: str = "cpu", batch_size: int = 32):
        if model not in DETOXIFY_URLS:
            raise ValueError(f"unknown detoxify model {model!r}; choose one of {sorted(DETOXIFY_URLS)}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if not _module_installed("detoxify"):
            raise DetoxifyUnavailableError(
                "DetoxifyFilter needs the 'detoxify' package, which is not installed: "
                "`pip install detoxify` (it brings torch and transformers), or use a TextClassifier "
                "trained with `fastlm data train-classifier` instead")
        checkpoint = detoxify_checkpoint_path(model)
        if not os.path.isfile(checkpoint):
            raise DetoxifyUnavailableError(
                f"detoxify is installed but the weights of model {model!r} are not in the local torch hub "
                f"cache: {checkpoint} does not exist (fastlm never downloads them). Fix: on a machine with "
                f"internet run `python -c \"from detoxify import Detoxify; Detoxify('{model}')\"`, or download "
                f"{DETOXIFY_URLS[model]} to that path (set TORCH_HOME to use another cache directory)")
        from detoxify import Detoxify

        try:
            self._model = Detoxify(model, checkpoint=checkpoint, device=device)
        except OSError as e:  # transformers could not find the tokenizer/config files offline
            raise DetoxifyUnavailableError(
                f"detoxify found its checkpoint {checkpoint} but could not load the Hugging Face "
                f"tokenizer/config it needs ({e}); run it once with internet access to cache them") from e
        self.model_name, self.threshold, self.label, self.batch_size = model, float(threshold), label, batch_size
        self.reason = f"detoxify:{label}"

    def scores(self, texts: Sequence[str]) -> list[float]:
        """detoxify's score for the filter's label, per text."""
        texts = _check_texts(texts)
        out: list[float] = []
        for i in range(0, len(texts), self.batch_size):
            result = self._model.predict(list(texts[i : i + self.batch_size]))
            if self.label not in result:
                raise ValueError(f"detoxify model {self.model_name!r} has no label {self.label!r}; "
                                 f"it has {sorted(result)}")
            out.extend(float(s) for s in result[self.label])
        return out

