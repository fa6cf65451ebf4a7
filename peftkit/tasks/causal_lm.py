"""Causal-LM supervised fine-tuning (SFT): chat, prompt/completion or plain text; completion-only loss;
validation loss and perplexity; greedy generation on held-out prompts, scored against their references."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from datasets import Dataset, DatasetDict, Value
from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq

from peftkit.data import ORIGIN, builtin_rotten_tomatoes, check_columns, where
from peftkit.errors import check
from peftkit.modeling import load_tokenizer
from peftkit.tasks import generation
from peftkit.tasks.base import Task
from peftkit.tasks.flags import CausalLMFlags
from peftkit.tasks.sft_data import (
    IGNORE,
    check_conversations,
    check_texts,
    encode_example,
    pack,
    require_template,
)

logger = logging.getLogger(__name__)
FORMATS = ("messages", "prompt_completion", "text")
# The built-in SFT data: the built-in reviews, asked as a question whose answer is the label.
QUESTION = "Is this movie review positive or negative? Answer with one word.\n\nReview: {text}"
ANSWERS = {"fresh": "positive", "rotten": "negative"}
BUILTIN_SIZES = {"train": 1000, "validation": 200, "test": 200}


def builtin_review_questions() -> DatasetDict:
    """The first 1,000 / 200 / 200 reviews of the built-in splits as one-turn chats (user asks, assistant
    answers positive or negative): small enough to fine-tune a 135M LM on two CPU cores in minutes."""
    out = DatasetDict()
    for split, ds in builtin_rotten_tomatoes().items():
        ds = ds.select(range(min(BUILTIN_SIZES[split], len(ds))))
        out[split] = Dataset.from_dict({"messages": [
            [{"role": "user", "content": QUESTION.format(text=t)}, {"role": "assistant", "content": ANSWERS[y]}]
            for t, y in zip(ds["text"], ds["label"], strict=True)]})
    return out


@dataclass
class CausalLM(CausalLMFlags, Task):
    """Supervised fine-tuning of a decoder LM (SmolLM2, Llama, Qwen, ...)."""
    name: ClassVar[str] = "causal_lm"
    auto_class: ClassVar[type] = AutoModelForCausalLM
    peft_task_type: ClassVar[str] = "CAUSAL_LM"
    kind: ClassVar[str] = "causal-LM head"
    pipeline_tag: ClassVar[str] = "text-generation"
    metrics: ClassVar[dict[str, str]] = {"loss": "min", "perplexity": "min"}
    default_metric: ClassVar[str] = "loss"
    builtin_dataset = staticmethod(builtin_review_questions)

    def __post_init__(self) -> None:
        check(self.generation_max_new_tokens > 0, "--generation_max_new_tokens must be positive.")
        check(self.max_generation_samples >= 0, "--max_generation_samples must be >= 0.")
        self.data = None
        self.format: str | None = None
        self.columns: dict[str, str] = {}

    # -- data format ------------------------------------------------------------------------------
    def discover(self, raw: DatasetDict) -> dict[str, Any]:
        """Which of the three formats the data is in (explicit columns first, then TRL's default names)."""
        names = raw["train"].column_names
        if self.messages_column:
            self.format, self.columns = "messages", {"messages": self.messages_column}
        elif self.prompt_column or self.completion_column:
            self.format = "prompt_completion"
            self.columns = {"prompt": self.prompt_column or "prompt", "completion": self.completion_column
                            or "completion"}
        elif "messages" in names:
            self.format, self.columns = "messages", {"messages": "messages"}
        elif "prompt" in names and "completion" in names:
            self.format, self.columns = "prompt_completion", {"prompt": "prompt", "completion": "completion"}
        elif self.data.text_column in names:
            self.format, self.columns = "text", {"text": self.data.text_column}
        else:
            shown = ", ".join(c for c in names if c != ORIGIN)
            check(False, f"Cannot tell what to train on: the data has columns {shown}. Give a conversation column "
                  "(--messages_column), a prompt and a completion column (--prompt_column, --completion_column), "
                  "or a text column for continued pre-training (--text_column).")
        flag = {"messages": "messages_column", "prompt": "prompt_column", "completion": "completion_column",
                "text": "text_column"}
        check_columns(raw, {flag[k]: v for k, v in self.columns.items()})
        self._check_values(raw)
        logger.info("causal_lm data format: %s (%s)", self.format,
                    ", ".join(f"{k}={v!r}" for k, v in self.columns.items()))
        return {"format": self.format, "columns": self.columns, "labels": None}

    def restore(self, state: dict[str, Any]) -> None:
        self.format, self.columns = state["format"], dict(state["columns"])

    def check_known_labels(self, raw: DatasetDict) -> None:
        """Evaluation data must be in the run's format."""
        flag = {"messages": "messages_column", "prompt": "prompt_column", "completion": "completion_column",
                "text": "text_column"}
        check_columns(raw, {flag[k]: v for k, v in self.columns.items()})
        self._check_values(raw)

    def _check_values(self, raw: DatasetDict) -> None:
        """Refuse what cannot be trained on. Numbers in a text column (a CSV reader's guess for answers like
        "28") become text, in ``raw`` itself."""
        for split, ds in raw.items():
            for column in self.columns.values():
                feature = ds.features[column]
                if isinstance(feature, Value) and feature.dtype not in ("string", "large_string", "null"):
                    ds = raw[split] = ds.cast_column(column, Value("string"))
            if self.format == "messages":
                check_conversations(ds, self.columns["messages"], split)
            elif self.format == "text":
                check_texts(ds, self.columns["text"], split, "text")
            else:
                check_texts(ds, self.columns["prompt"], split, "prompt", allow_turns=True)
                check_texts(ds, self.columns["completion"], split, "completion", allow_turns=True)

    def new_modules(self, model) -> list[str]:
        """None: the output layer of an LM is pretrained (and often tied to the embeddings)."""
        return []

    def load_processor(self, source):
        return load_tokenizer(source)

    # -- batches ----------------------------------------------------------------------------------
    def preprocess(self, raw: DatasetDict, tokenizer) -> DatasetDict:
        """Render and tokenize every example with its loss mask; drop (and count) those cut before any
        supervised token; pack the training split with --packing."""
        conversational = self.format == "messages" or (
            self.format == "prompt_completion" and isinstance(raw["train"][0][self.columns["prompt"]], list))
        if conversational:
            require_template(tokenizer)
        max_length = self.data.max_seq_length
        out = DatasetDict()
        for split, ds in raw.items():
            rows, dropped, cut = [], [], 0
            for i, row in enumerate(ds):
                ids, labels, truncated = encode_example(tokenizer, self.format, row, self.columns, max_length,
                                                        self.train_on_prompt)
                cut += truncated
                if all(t == IGNORE for t in labels[1:]):
                    dropped.append(i)
                    continue
                rows.append({"input_ids": ids, "labels": labels})
            check(len(rows) > 0, f"Every {split} example is longer than --max_seq_length {max_length} before its "
                  "completion begins, so none carries a supervised token. Raise --max_seq_length.")
            if cut:
                logger.warning("%d of %d %s examples exceed --max_seq_length %d tokens and were cut at the end; "
                               "raise --max_seq_length to keep them whole.", cut, len(ds), split, max_length)
            if dropped:
                logger.warning("%d %s example(s) dropped: their prompt fills --max_seq_length %d tokens, so no "
                               "completion token is left to learn from (%s).", len(dropped), split, max_length,
                               where(ds, dropped))
            if self.packing and split == "train":
                before = len(rows)
                rows = pack(rows, max_length)
                logger.info("Packed %d training examples into %d rows of at most %d tokens.", before, len(rows),
                            max_length)
            out[split] = Dataset.from_list(rows)
        return out

    def example_batch(self, batch_size: int, length: int, config) -> dict[str, torch.Tensor]:
        """Token ids with a label per token (the planner's batch)."""
        ids = torch.zeros(batch_size, length, dtype=torch.long, device="meta")
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.zeros_like(ids)}

    def collator(self, tokenizer):
        pad = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE, padding=True)

        def collate(rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
            if "position_ids" not in rows[0]:
                return dict(pad(rows))
            # Packed rows: no attention mask (transformers reads the example boundaries from position_ids);
            # padding continues the positions so that it forms no example of its own with real tokens.
            width = max(len(r["input_ids"]) for r in rows)
            batch = {k: [] for k in ("input_ids", "labels", "position_ids")}
            for r in rows:
                extra = width - len(r["input_ids"])
                batch["input_ids"].append(r["input_ids"] + [tokenizer.pad_token_id] * extra)
                batch["labels"].append(r["labels"] + [IGNORE] * extra)
                batch["position_ids"].append(r["position_ids"] + list(range(extra)))
            return {k: torch.tensor(v) for k, v in batch.items()}

        return collate

    def loss_units(self, batch: dict[str, torch.Tensor]) -> int:
        """The model's loss is a mean over the supervised (next-)tokens."""
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    def loss_inputs(self, outputs, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-token logits and labels, one row per position, for losses other than the model's own."""
        logits = outputs.logits[:, :-1]
        return logits.reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1)

    # -- evaluation -------------------------------------------------------------------------------
    def eval_rows(self, outputs, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each example's summed next-token loss and its number of supervised tokens."""
        logits, labels = outputs.logits[:, :-1], batch["labels"][:, 1:]
        sums = torch.stack([torch.nn.functional.cross_entropy(logits[i].float(), labels[i], ignore_index=IGNORE,
                                                              reduction="sum") for i in range(len(labels))])
        return {"loss_sum": sums.double(), "tokens": (labels != IGNORE).sum(-1)}

    def compute_metrics(self, rows: dict[str, torch.Tensor]) -> dict[str, float]:
        """Token-weighted: every supervised token of the split counts once."""
        tokens = int(rows["tokens"].sum())
        loss = float(rows["loss_sum"].sum()) / tokens if tokens else float("nan")
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}

    def parity_logits(self, outputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The logits at the supervised positions (what the loss and the answers depend on)."""
        return outputs.logits[:, :-1][batch["labels"][:, 1:] != IGNORE].float()

    def _prompt_and_reference(self, tokenizer, row: dict[str, Any]) -> tuple[str, str] | None:
        if self.format == "messages":
            turns = row[self.columns["messages"]]
            last = max(i for i, t in enumerate(turns) if t["role"] == "assistant")
            prompt = tokenizer.apply_chat_template(turns[:last], tokenize=False, add_generation_prompt=True)
            return prompt, turns[last]["content"]
        if self.format == "prompt_completion":
            prompt, completion = row[self.columns["prompt"]], row[self.columns["completion"]]
            if isinstance(prompt, list):
                prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
                completion = completion[-1]["content"] if isinstance(completion, list) else completion
            return prompt, completion
        return None  # plain text has no reference answer

    def final_evaluation(self, acc, model, tokenizer, raw: DatasetDict, output_dir: Path | None,
                         stage: str) -> dict[str, Any] | None:
        """Greedy generation on the first --max_generation_samples held-out prompts (test, else validation),
        scored by exact match and token F1; the outputs go to predictions.jsonl (predictions_base.jsonl for
        the model before training). Processes share the prompts."""
        split = "test" if "test" in raw else "validation"
        if self.format == "text" or self.max_generation_samples == 0 or split not in raw:
            return None
        ds = raw[split].select(range(min(self.max_generation_samples, len(raw[split]))))
        pairs = [self._prompt_and_reference(tokenizer, row) for row in ds]
        with acc.split_between_processes(list(range(len(pairs)))) as mine:
            outputs = generation.generate(acc.unwrap_model(model), tokenizer, [pairs[i][0] for i in mine],
                                          self.generation_max_new_tokens, show_progress=acc.is_local_main_process)
        from accelerate.utils import gather_object

        outputs = gather_object(outputs) if acc.num_processes > 1 else outputs
        rows = [{"prompt": p, "reference": r, "output": o} for (p, r), o in zip(pairs, outputs, strict=True)]
        scores = generation.score(rows) | {"split": split}
        if output_dir is not None and acc.is_main_process:
            name = "predictions.jsonl" if stage == "fine_tuned" else f"predictions_{stage}.jsonl"
            (Path(output_dir) / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        logger.info("Generation on %d %s prompts (%s model): exact match %.4f, token F1 %.4f", len(rows), split,
                    stage.replace("_", "-"), scores["exact_match"], scores["token_f1"])
        return scores

    def analyze_split(self, model, tokenizer, raw, data, batch_size: int, out, top_k: int) -> dict[str, Any]:
        """`peftkit analyze`: greedy generations on the split's first --max_generation_samples prompts, scored by
        token F1 and exact match; the ``top_k`` worst (lowest token F1) go to errors.csv."""
        check(self.format != "text", "peftkit analyze scores generations against references: a plain-text run "
              "(--text_column) has none. Use `peftkit eval` for its loss and perplexity.")
        ds = raw.select(range(min(self.max_generation_samples or len(raw), len(raw))))
        kept = [(i, row, pair) for i, row in enumerate(ds) if (pair := self._prompt_and_reference(tokenizer, row))]
        check(bool(kept), "No prompt with a reference answer in this data: nothing to score.")
        prompts = [pair[0] for _, _, pair in kept]
        outputs = generation.generate(model, tokenizer, prompts, self.generation_max_new_tokens)
        rows = [{"kind": "worst generation", "example": row.get(ORIGIN, f"example {i}"), "prompt": p, "reference": r,
                 "output": o, "token_f1": round(generation.token_f1(o, r), 4),
                 "exact_match": generation.exact_match(o, r)}
                for (i, row, (p, r)), o in zip(kept, outputs, strict=True)]
        scores = generation.score(rows)
        worst = sorted(rows, key=lambda r: (r["token_f1"], r["example"]))[:top_k]
        result = {"examples": len(rows), **{k: round(v, 4) for k, v in scores.items()},
                  "token_f1_histogram": [sum(lo <= r["token_f1"] < lo + 0.25 or (lo == 0.75 and r["token_f1"] == 1)
                                             for r in rows) for lo in (0, 0.25, 0.5, 0.75)]}
        lines = [f"{len(rows)} prompts, greedy generation of at most {self.generation_max_new_tokens} tokens: exact "
                 f"match {scores['exact_match']:.4f}, token F1 {scores['token_f1']:.4f}. Token F1 in [0, .25), "
                 f"[.25, .5), [.5, .75), [.75, 1]: {', '.join(map(str, result['token_f1_histogram']))} prompts.", "",
                 "The worst generations (all in errors.csv):", "",
                 "| example | prompt | reference | output | token F1 |", "|---|---|---|---|---|"]
        lines += [f"| {r['example']} | {cell(r['prompt'], tail=True)} | {cell(r['reference'])} | {cell(r['output'])} | "
                  f"{r['token_f1']:.3f} |" for r in worst[:5]]
        return {"result": result, "errors": worst, "confusion": None, "markdown": lines,
                "check": ("token_f1", scores["token_f1"]), "headline": f"token F1 {scores['token_f1']:.4f}, exact "
                f"match {scores['exact_match']:.4f} over {len(rows)} generations"}

    # -- using a trained run ----------------------------------------------------------------------
    def read_inputs(self, path: str | None, columns: dict[str, str | None]) -> list[dict[str, Any]]:
        """Prompts: lines of stdin or a .txt file (each a user message), or a data file's messages (the
        conversation so far) or prompt column."""
        return generation.read_prompts(path, columns.get("text_column"), [self.columns.get("messages"), "messages",
                                                                          self.columns.get("prompt"), "prompt"])

    def check_inputs(self, inputs: list[dict[str, Any]]) -> None:
        check(bool(inputs), "No prompts: the input was empty.")

    def predict(self, model, tokenizer, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Greedy continuations, the chat template applied as in training."""
        self.check_inputs(inputs)
        prompts = [generation.render_prompt(tokenizer, row["prompt"], self.format == "messages") for row in inputs]
        outputs = generation.generate(model, tokenizer, prompts, self.generation_max_new_tokens, show_progress=False)
        return [{"prompt": row["prompt"], "output": out} for row, out in zip(inputs, outputs, strict=True)]

    def headline(self, results: dict[str, Any]) -> str:
        line = f"validation loss {results['eval']['loss']:.4f} (perplexity {results['eval']['perplexity']:.2f})"
        final = results.get("final_evaluation") or {}
        base, tuned = final.get("base"), final.get("fine_tuned")
        if tuned:
            line += (f"\nheld-out generation ({tuned['samples']} {tuned['split']} prompts), exact match: base model "
                     f"{base['exact_match']:.4f} -> fine-tuned {tuned['exact_match']:.4f}; token F1: "
                     f"{base['token_f1']:.4f} -> {tuned['token_f1']:.4f}")
        return line


def cell(text: str, width: int = 80, tail: bool = False) -> str:
    """A table cell: one line, no pipes, cut to ``width`` (keeping the end with ``tail``: a rendered chat prompt
    ends with the user's question)."""
    flat = " ".join(str(text).split()).replace("|", "/")
    if len(flat) <= width:
        return flat
    return "…" + flat[-(width - 1):] if tail else flat[:width - 1] + "…"
