"""Preference tuning of a causal LM (DPO, IPO, SimPO): from pairs of a chosen and a rejected answer to one prompt,
raise the chosen answer's log-probability against the rejected one's, measured from a reference model.

The reference is the model as it was before training: for an adapter strategy (LoRA, QLoRA, DoRA, IA3, ...) the
same model with its adapters switched off, so it costs no memory; otherwise a frozen copy taken before the first
step. SimPO needs none. A batch of B pairs runs its B prompts once, and both answers of each pair read the prompt's
keys and values (:func:`answer_logps`); the LM head runs only over the answers' positions.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel, gather_object
from datasets import Dataset, DatasetDict
from peft import PeftModel
from transformers import AutoModelForCausalLM

from peftkit.data import ORIGIN, builtin_rotten_tomatoes, check_columns, where
from peftkit.errors import check
from peftkit.modeling import load_tokenizer
from peftkit.tasks import generation
from peftkit.tasks.base import Task
from peftkit.tasks.causal_lm import ANSWERS, QUESTION
from peftkit.tasks.flags import PreferenceFlags
from peftkit.tasks.preference_data import Counts, check_pairs, encode_pair, extract_prompt, render
from peftkit.tasks.sft_data import IGNORE, require_template

logger = logging.getLogger(__name__)
LOSSES = ("dpo", "ipo", "simpo")
DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "simpo": 2.0}
BUILTIN_SIZES = {"train": 400, "validation": 100, "test": 200}


def builtin_review_preferences() -> DatasetDict:
    """The built-in reviews as preference pairs: the review question of the built-in SFT data as the user's turn,
    the right answer (positive / negative) as chosen and the other as rejected. The rejected answer is a fluent,
    on-topic answer that is wrong, so preferring the chosen one is knowing the review's sentiment."""
    out = DatasetDict()
    for split, ds in builtin_rotten_tomatoes().items():
        ds = ds.select(range(min(BUILTIN_SIZES[split], len(ds))))
        rows = {"prompt": [], "chosen": [], "rejected": []}
        for text, label in zip(ds["text"], ds["label"], strict=True):
            right, = (a for k, a in ANSWERS.items() if k == label)
            wrong, = (a for k, a in ANSWERS.items() if k != label)
            rows["prompt"].append([{"role": "user", "content": QUESTION.format(text=text)}])
            rows["chosen"].append([{"role": "assistant", "content": right}])
            rows["rejected"].append([{"role": "assistant", "content": wrong}])
        out[split] = Dataset.from_dict(rows)
    return out


@dataclass
class PreferenceOutput:
    """What :meth:`Preference.forward` returns: the mean loss over the batch's pairs, and per pair what evaluation
    reads. ``logits``: each row's summed answer log-probability (chosen rows, then rejected)."""

    loss: torch.Tensor
    logits: torch.Tensor
    pair_losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


@functools.cache
def _forward_takes(cls: type) -> tuple[bool, str]:
    """Whether the model's forward keeps only the last logits (``logits_to_keep``), and its cache argument's name
    (``cache`` from transformers 5.25, ``past_key_values`` before)."""
    params = inspect.signature(cls.forward).parameters
    return "logits_to_keep" in params, "cache" if "cache" in params else "past_key_values"


def answer_logps(model, batch: dict[str, torch.Tensor], share_prompt: bool = True) -> torch.Tensor:
    """Each answer's summed log-probability (chosen rows, then rejected). ``share_prompt``: the prompts run once, and
    their keys and values serve both answers (half the prompt's work; gradients flow through them as through one
    long row); otherwise each answer runs as a whole prompt + answer row. Prompts are padded on the left and
    answers on the right, so the answers' positions are the last ones: the LM head runs on those only."""
    prompt, prompt_mask = batch["input_ids"], batch["attention_mask"]
    answers, answer_mask = batch["task_answer_ids"], batch["task_answer_mask"]
    rows, span = len(prompt), answers.shape[1]
    inner = extract_model_from_parallel(model)
    base = inner.get_base_model() if isinstance(inner, PeftModel) else inner
    keeps, cache_arg = _forward_takes(type(base))
    checkpointing = getattr(base, "is_activation_checkpointing", None)
    if checkpointing is None:  # transformers before 5.25
        checkpointing = getattr(base, "is_gradient_checkpointing", False)
    if share_prompt and not checkpointing:  # activation checkpointing keeps no keys and values
        out = model(input_ids=prompt, attention_mask=prompt_mask, use_cache=True,
                    position_ids=(prompt_mask.cumsum(-1) - 1).clamp(min=0), **({"logits_to_keep": 1} if keeps else {}))
        cache = getattr(out, cache_arg)
        cache.batch_select_indices(torch.arange(rows, device=prompt.device).repeat(2))  # both answers' rows
        mask = torch.cat([prompt_mask.repeat(2, 1), answer_mask.to(prompt_mask.dtype)], dim=1)
        positions = prompt_mask.sum(-1).repeat(2)[:, None] + torch.arange(span, device=prompt.device)
        rest = model(input_ids=answers, attention_mask=mask, position_ids=positions, use_cache=True,
                     **{cache_arg: cache}, **({"logits_to_keep": span} if keeps else {}))
        # The prompt's last position predicts each answer's first token; answer position t the token t + 1.
        logits = torch.cat([out.logits[:, -1:].repeat(2, 1, 1), rest.logits[:, -span:-1]], dim=1)
    else:
        mask = torch.cat([prompt_mask.repeat(2, 1), answer_mask.to(prompt_mask.dtype)], dim=1)
        out = model(input_ids=torch.cat([prompt.repeat(2, 1), answers], dim=1), attention_mask=mask,
                    position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=False,
                    **({"logits_to_keep": span + 1} if keeps else {}))
        logits = out.logits[:, -(span + 1):-1]
    logits = logits.float()
    picked = logits.gather(-1, answers.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return (picked * answer_mask).sum(-1)


@dataclass
class Preference(PreferenceFlags, Task):
    """Preference tuning of a decoder LM on chosen / rejected pairs."""
    name: ClassVar[str] = "preference"
    auto_class: ClassVar[type] = AutoModelForCausalLM
    peft_task_type: ClassVar[str] = "CAUSAL_LM"
    kind: ClassVar[str] = "causal-LM head"
    pipeline_tag: ClassVar[str] = "text-generation"
    metrics: ClassVar[dict[str, str]] = {
        "loss": "min", "reward_accuracy": "max", "reward_margin": "max", "preference_accuracy": "max",
        "logps_chosen": "max", "logps_rejected": "min"}
    default_metric: ClassVar[str] = "loss"
    parity_metric: ClassVar[str] = "preference_accuracy"  # a merged model has no adapters to switch off
    builtin_dataset = staticmethod(builtin_review_preferences)

    def __post_init__(self) -> None:
        check(self.loss_type in LOSSES, f"--loss_type {self.loss_type!r} is not one of {', '.join(LOSSES)}.")
        self.beta = DEFAULT_BETA[self.loss_type] if self.beta is None else self.beta
        check(self.beta > 0, f"--beta must be positive, got {self.beta}.")
        check(self.generation_max_new_tokens > 0, "--generation_max_new_tokens must be positive.")
        check(self.max_generation_samples >= 0, "--max_generation_samples must be >= 0.")
        self.data = None
        self.columns: dict[str, str | None] = {}
        self.conversational: bool | None = None  # known once data is seen (discover) or the run is loaded
        self.reference = None  # a frozen copy of the model, when its adapters cannot be switched off

    # -- data ---------------------------------------------------------------------------------------
    def discover(self, raw: DatasetDict) -> dict[str, Any]:
        """The columns (the prompt's may be absent: implicit) and the format, the same in every split."""
        prompt = self.prompt_column or ("prompt" if "prompt" in raw["train"].column_names else None)
        self.columns = {"prompt": prompt, "chosen": self.chosen_column, "rejected": self.rejected_column}
        self.check_known_labels(raw)
        logger.info("preference data: %s pairs, %s (%s)", "conversational" if self.conversational else "text",
                    f"prompt column {prompt!r}" if prompt else "prompt = what chosen and rejected share",
                    ", ".join(f"{k}={v!r}" for k, v in self.columns.items() if v))
        return {"conversational": self.conversational, "columns": self.columns, "labels": None}

    def restore(self, state: dict[str, Any]) -> None:
        self.columns, self.conversational = dict(state["columns"]), state["conversational"]

    def check_known_labels(self, raw: DatasetDict) -> None:
        """The columns exist, and every split holds pairs of one format (the run's, once known)."""
        check_columns(raw, {f"{k}_column": v for k, v in self.columns.items()})
        formats = {split: check_pairs(ds, self.columns, split) for split, ds in raw.items()}
        check(len(set(formats.values())) == 1, "Some splits hold conversations and others text: "
              + ", ".join(f"{s}: {'conversations' if c else 'text'}" for s, c in formats.items()) + ".")
        found = next(iter(formats.values()))
        kind = {True: "conversations", False: "text"}
        check(self.conversational in (None, found), f"This run was trained on {kind[bool(self.conversational)]} "
              f"pairs, and this data holds {kind[found]}: give it in the run's format.")
        self.conversational = found

    def load_processor(self, source):
        return load_tokenizer(source)

    def _parts(self, row: dict[str, Any]) -> tuple[Any, Any, Any]:
        chosen, rejected = row[self.columns["chosen"]], row[self.columns["rejected"]]
        if self.columns["prompt"] is None:
            return extract_prompt(chosen, rejected)
        return row[self.columns["prompt"]], chosen, rejected

    def _pair(self, tokenizer, row: dict[str, Any], counts: Counts | None = None) -> dict[str, list[int]]:
        """One row's ids. An empty prompt (an implicit one with nothing shared) becomes the BOS token (EOS without
        one): an answer's first token needs a position before it."""
        pair = encode_pair(tokenizer, *self._parts(row), self.data.max_seq_length, counts)
        if not pair["input_ids"]:
            pair["input_ids"] = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None
                                 else tokenizer.eos_token_id]
        return pair

    def _encode(self, ds: Dataset, tokenizer, split: str, report: bool = True) -> Dataset:
        """Every pair as prompt ids and two answers' ids; pairs with nothing to prefer are counted and left out."""
        counts, rows = Counts(pairs=len(ds)), []
        for i, row in enumerate(ds.select_columns([c for c in self.columns.values() if c]).to_list()):
            pair = self._pair(tokenizer, row, counts)
            if not pair["chosen_ids"] or not pair["rejected_ids"]:
                counts.empty.append(i)
            elif pair["chosen_ids"] == pair["rejected_ids"]:
                counts.same.append(i)
            else:
                rows.append(pair)
        length = self.data.max_seq_length
        check(bool(rows), f"No {split} pair has two different answers to learn from: {len(counts.same)} have the "
              f"same chosen and rejected answer{' once cut to --max_seq_length' if counts.answer_cut else ''}, "
              f"{len(counts.empty)} have an empty answer. Check --chosen_column and --rejected_column.")
        if report and (counts.prompt_cut or counts.answer_cut):
            logger.warning("%s pairs longer than --max_seq_length %d tokens: %d lost the start of their prompt, %d "
                           "the end of their answers. Raise --max_seq_length to keep them whole.", split, length,
                           counts.prompt_cut, counts.answer_cut)
        for what, dropped in (("the same chosen and rejected answer", counts.same),
                              ("an answer without tokens", counts.empty)):
            if report and dropped:
                logger.warning("%d of %d %s pairs left out: %s (%s).", len(dropped), len(ds), split, what,
                               where(ds, dropped))
        return Dataset.from_list(rows)

    def preprocess(self, raw: DatasetDict, tokenizer) -> DatasetDict:
        if self.conversational:
            require_template(tokenizer)
        return DatasetDict({split: self._encode(ds, tokenizer, split) for split, ds in raw.items()})

    def collator(self, tokenizer):
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

        def collate(rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
            """The B prompts padded on the left; the 2B answers (chosen, then rejected) padded on the right, with
            ``task_answer_mask`` marking their tokens; ``labels`` is one 0 per pair (-100: a repeat that does not
            count)."""
            answers = [r[k] for k in ("chosen_ids", "rejected_ids") for r in rows]
            width, span = max(len(r["input_ids"]) for r in rows), max(map(len, answers))
            prompt = torch.full((len(rows), width), pad, dtype=torch.long)
            prompt_mask = torch.zeros(len(rows), width, dtype=torch.long)
            for i, r in enumerate(rows):
                prompt[i, width - len(r["input_ids"]):] = torch.tensor(r["input_ids"])
                prompt_mask[i, width - len(r["input_ids"]):] = 1
            answer = torch.full((len(answers), span), pad, dtype=torch.long)
            answer_mask = torch.zeros(len(answers), span, dtype=torch.bool)
            for i, ids in enumerate(answers):
                answer[i, :len(ids)] = torch.tensor(ids)
                answer_mask[i, :len(ids)] = True
            return {"input_ids": prompt, "attention_mask": prompt_mask, "task_answer_ids": answer,
                    "task_answer_mask": answer_mask, "labels": torch.zeros(len(rows), dtype=torch.long)}

        return collate

    def loss_units(self, batch: dict[str, torch.Tensor]) -> int:
        """The loss is a mean over pairs."""
        return int((batch["labels"] != IGNORE).sum())

    def example_batch(self, batch_size: int, length: int, config) -> dict[str, torch.Tensor]:
        """The planner's batch: both answers' rows (2 x batch_size), a label per token (as an LM's own loss)."""
        ids = torch.zeros(2 * batch_size, length, dtype=torch.long, device="meta")
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.zeros_like(ids)}

    # -- the loss ---------------------------------------------------------------------------------
    def prepare_model(self, model, model_dir: str | None = None) -> dict[str, Any]:
        """At training time, a model without adapters to switch off keeps a frozen copy as its reference."""
        if model_dir is None or self.loss_type == "simpo":
            return {}
        if isinstance(model, PeftModel):
            logger.info("Reference model: the base with the adapters switched off (no second copy in memory).")
        else:
            self.reference = copy.deepcopy(model).requires_grad_(False).eval()
            logger.info("Reference model: a frozen copy of the model before training (%s parameters held twice; an "
                        "adapter strategy such as lora needs none).", f"{sum(p.numel() for p in model.parameters()):,}")
        return {}

    @torch.no_grad()
    def reference_logps(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The reference's answer log-probabilities, without gradients and in eval mode (no dropout): the model with
        its adapters off, or the frozen copy; None where there is neither (a merged or fully tuned model loaded
        later)."""
        inner = extract_model_from_parallel(model)
        if isinstance(inner, PeftModel):
            was = model.training
            model.eval()
            try:
                with inner.disable_adapter():
                    return answer_logps(model, batch, self.share_prompt)
            finally:
                model.train(was)
        if self.reference is None:
            return None
        device = batch["input_ids"].device
        if next(self.reference.parameters()).device != device:
            self.reference.to(device)
        return answer_logps(self.reference, batch, self.share_prompt)

    def pair_losses(self, logps: torch.Tensor, tokens: torch.Tensor,
                    reference: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per pair: the loss, and the chosen and rejected answers' rewards (what the loss separates)."""
        n, beta = len(logps) // 2, self.beta
        if self.loss_type == "simpo":  # reference-free, per-token log-probability
            rewards = beta * logps / tokens
            return -F.logsigmoid(rewards[:n] - rewards[n:] - self.simpo_gamma), rewards[:n], rewards[n:]
        if reference is None:
            nan = torch.full((n,), float("nan"), device=logps.device)
            return nan, nan, nan
        ratios = logps - reference
        if self.loss_type == "ipo":  # the per-token log-ratio margin, pulled towards 1 / (2 beta)
            ratios = ratios / tokens
            losses = (ratios[:n] - ratios[n:] - 1 / (2 * beta)) ** 2
        else:
            losses = -F.logsigmoid(beta * (ratios[:n] - ratios[n:]))
        return losses, beta * ratios[:n], beta * ratios[n:]

    def forward(self, model, batch: dict[str, torch.Tensor]) -> PreferenceOutput:
        """Both answers of every pair in one pass, the reference's in another; the mean loss over the pairs that
        count."""
        tokens = batch["task_answer_mask"].sum(-1)
        check(bool((tokens > 0).all()), "A preference row reached the model without answer tokens; its loss would "
              "be meaningless. Please report this with your data.")
        logps = answer_logps(model, batch, self.share_prompt)
        reference = None if self.loss_type == "simpo" else self.reference_logps(model, batch)
        losses, chosen, rejected = self.pair_losses(logps, tokens, reference)
        counted = (batch["labels"] != IGNORE).to(losses.dtype)
        loss = (losses * counted).sum() / counted.sum().clamp(min=1)
        return PreferenceOutput(loss=loss, logits=logps, pair_losses=losses.detach(), chosen_rewards=chosen.detach(),
                                rejected_rewards=rejected.detach())

    # -- evaluation -------------------------------------------------------------------------------
    def eval_rows(self, outputs: PreferenceOutput, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n = len(outputs.pair_losses)
        logps = outputs.logits.detach().double()
        return {"loss": outputs.pair_losses.double(), "chosen_logps": logps[:n], "rejected_logps": logps[n:],
                "chosen_rewards": outputs.chosen_rewards.double(),
                "rejected_rewards": outputs.rejected_rewards.double()}

    def compute_metrics(self, rows: dict[str, torch.Tensor]) -> dict[str, float]:
        """Means over pairs. reward_accuracy: the share of pairs whose chosen answer gets the higher reward (strictly,
        as TRL counts); preference_accuracy: the share whose chosen answer the model itself finds more likely (summed
        log-probabilities), which a model before training has too. Without a reference, the reward metrics of dpo
        and ipo are NaN."""
        chosen, rejected = rows["chosen_rewards"], rows["rejected_rewards"]
        known = not bool(chosen.isnan().any())
        return {"loss": float(rows["loss"].mean()),
                "reward_accuracy": float((chosen > rejected).double().mean()) if known else float("nan"),
                "reward_margin": float((chosen - rejected).mean()),
                "preference_accuracy": float((rows["chosen_logps"] > rows["rejected_logps"]).double().mean()),
                "logps_chosen": float(rows["chosen_logps"].mean()),
                "logps_rejected": float(rows["rejected_logps"].mean())}

    def parity_logits(self, outputs: PreferenceOutput, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per pair, the chosen and the rejected answer's log-probability (what the loss and the rewards depend on;
        the larger is the answer the model prefers)."""
        logps = outputs.logits.detach().float()
        return torch.stack([logps[:len(logps) // 2], logps[len(logps) // 2:]], dim=1)

    def _prompt_and_reference(self, tokenizer, row: dict[str, Any]) -> tuple[str, str]:
        """A held-out pair's prompt as the model reads it, and the chosen answer's text (what generation is scored
        against)."""
        prompt, chosen, _ = self._parts(row)
        if isinstance(chosen, list):
            return render(tokenizer, prompt, chosen, chosen)[0], chosen[-1]["content"]
        return prompt, chosen

    def final_evaluation(self, acc, model, tokenizer, raw: DatasetDict, output_dir: Path | None,
                         stage: str) -> dict[str, Any] | None:
        """On the held-out pairs (test, else validation): before training, the model's preference accuracy and
        log-probabilities (after it, the loop's own evaluation of that split has them); then greedy generation on
        the first --max_generation_samples prompts, scored against the chosen answers (predictions.jsonl;
        predictions_base.jsonl before training)."""
        split = "test" if "test" in raw else "validation"
        if split not in raw:
            return None
        scores: dict[str, Any] = {"split": split}
        if stage == "base":  # after training, the loop's own evaluation of the same split has the tuned model's
            scores |= self._score_pairs(acc, model, tokenizer, raw[split])
        if self.max_generation_samples:
            scores |= self._generate(acc, model, tokenizer, raw[split], output_dir, stage)
        if stage == "base":
            logger.info("Held-out %s pairs (model before training): preference accuracy %.4f%s", split,
                        scores["preference_accuracy"], f", exact match of generations with the chosen answer "
                        f"{scores['exact_match']:.4f}" if "exact_match" in scores else "")
        return scores

    def _score_pairs(self, acc, model, tokenizer, ds: Dataset) -> dict[str, Any]:
        """The model's preference accuracy and log-probabilities on ``ds``'s pairs; processes share them."""
        data = self._encode(ds, tokenizer, "held-out", report=False)
        collate, device = self.collator(tokenizer), next(model.parameters()).device
        with acc.split_between_processes(list(range(len(data)))) as mine:
            rows = []
            was = model.training
            model.eval()
            with torch.no_grad():
                for start in range(0, len(mine), 16):
                    batch = {k: v.to(device) for k, v in collate(data.select(mine[start:start + 16])).items()}
                    rows.append({k: v.cpu() for k, v in self.eval_rows(self.forward(model, batch), batch).items()})
            model.train(was)
        rows = gather_object(rows) if acc.num_processes > 1 else rows
        metrics = self.compute_metrics({k: torch.cat([r[k] for r in rows]) for k in rows[0]})
        return {"pairs": len(data)} | {k: metrics[k] for k in ("preference_accuracy", "logps_chosen", "logps_rejected")}

    def _generate(self, acc, model, tokenizer, ds: Dataset, output_dir: Path | None, stage: str) -> dict[str, Any]:
        """Greedy answers to the first --max_generation_samples prompts of ``ds``, scored against the chosen ones."""
        held = ds.select(range(min(self.max_generation_samples, len(ds))))
        pairs = [self._prompt_and_reference(tokenizer, row) for row in held]
        with acc.split_between_processes(list(range(len(pairs)))) as mine:
            outputs = generation.generate(acc.unwrap_model(model), tokenizer, [pairs[i][0] for i in mine],
                                          self.generation_max_new_tokens, show_progress=acc.is_local_main_process)
        outputs = gather_object(outputs) if acc.num_processes > 1 else outputs
        generated = [{"prompt": p, "reference": r, "output": o} for (p, r), o in zip(pairs, outputs, strict=True)]
        if output_dir is not None and acc.is_main_process:
            name = "predictions.jsonl" if stage == "fine_tuned" else f"predictions_{stage}.jsonl"
            (Path(output_dir) / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                         for r in generated))
        return generation.score(generated)

    def analyze_split(self, model, tokenizer, raw, data, batch_size: int, out, top_k: int) -> dict[str, Any]:
        """`peftkit analyze`: every pair's log-probability margin (chosen minus rejected) under the tuned model; the
        ``top_k`` pairs it gets most wrong (lowest margin) go to errors.csv."""
        from peftkit.tasks.causal_lm import cell

        kept, rows = [], []
        for i, row in enumerate(raw):
            pair = self._pair(tokenizer, row)
            if pair["chosen_ids"] and pair["rejected_ids"] and pair["chosen_ids"] != pair["rejected_ids"]:
                kept.append(i)
                rows.append(pair)
        check(bool(rows), "No pair with two different answers in this data: nothing to analyse.")
        collate, device, scores = self.collator(tokenizer), next(model.parameters()).device, []
        model.eval()
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                batch = {k: v.to(device) for k, v in collate(rows[start:start + batch_size]).items()}
                scores.append({k: v.cpu() for k, v in self.eval_rows(self.forward(model, batch), batch).items()})
        merged = {k: torch.cat([part[k] for part in scores]) for k in scores[0]}
        metrics = self.compute_metrics(merged)
        margins = (merged["chosen_logps"] - merged["rejected_logps"]).tolist()
        errors = []
        for j in sorted(range(len(kept)), key=lambda j: margins[j])[:top_k]:
            prompt, chosen, rejected = self._parts(raw[kept[j]])
            text = [(v[-1]["content"] if v else "") if isinstance(v, list) else v for v in (prompt, chosen, rejected)]
            errors.append({"kind": "prefers the rejected answer" if margins[j] < 0 else "least sure right",
                           "example": raw[kept[j]].get(ORIGIN, f"example {kept[j]}"), "prompt": text[0],
                           "chosen": text[1], "rejected": text[2], "logp_margin": round(margins[j], 4)})
        wrong = sum(m < 0 for m in margins)
        result = {"examples": len(kept), **{k: round(v, 4) for k, v in metrics.items()}, "pairs_preferring_rejected":
                  wrong}
        lines = [f"{len(kept)} pairs: the tuned model finds the chosen answer more likely in "
                 f"{metrics['preference_accuracy']:.4f} of them; {wrong} prefer the rejected one.", "",
                 "The pairs it gets most wrong (all in errors.csv):", "",
                 "| example | prompt | chosen | rejected | log-prob margin |", "|---|---|---|---|---|"]
        lines += [f"| {e['example']} | {cell(e['prompt'], tail=True)} | {cell(e['chosen'])} | {cell(e['rejected'])} | "
                  f"{e['logp_margin']:.3f} |" for e in errors[:5]]
        return {"result": result, "errors": errors, "confusion": None, "markdown": lines,
                "check": ("preference_accuracy", metrics["preference_accuracy"]),
                "headline": f"preference accuracy {metrics['preference_accuracy']:.4f} over {len(kept)} pairs"}

    # -- using a trained run ----------------------------------------------------------------------
    def read_inputs(self, path: str | None, columns: dict[str, str | None]) -> list[dict[str, Any]]:
        """Prompts: lines of stdin or a .txt file (each a user message), or a data file's prompt column."""
        return generation.read_prompts(path, columns.get("text_column"), [self.columns.get("prompt"), "prompt",
                                                                          "messages"])

    def check_inputs(self, inputs: list[dict[str, Any]]) -> None:
        check(bool(inputs), "No prompts: the input was empty.")

    def predict(self, model, tokenizer, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Greedy answers, the prompt rendered as in training."""
        self.check_inputs(inputs)
        prompts = [generation.render_prompt(tokenizer, row["prompt"], self.conversational) for row in inputs]
        outputs = generation.generate(model, tokenizer, prompts, self.generation_max_new_tokens, show_progress=False)
        return [{"prompt": row["prompt"], "output": out} for row, out in zip(inputs, outputs, strict=True)]

    def headline(self, results: dict[str, Any]) -> str:
        line = (f"validation loss {results['eval']['loss']:.4f}, reward accuracy "
                f"{results['eval']['reward_accuracy']:.4f}, reward margin {results['eval']['reward_margin']:.4f}")
        final = results.get("final_evaluation") or {}
        base, tuned = final.get("base"), final.get("fine_tuned")
        if base and tuned:
            after = results["test"] if base["split"] == "test" else results["eval"]
            line += (f"\nheld-out preference accuracy ({base['pairs']} {base['split']} pairs: the chosen answer more "
                     f"likely than the rejected one): base model {base['preference_accuracy']:.4f} -> tuned "
                     f"{after['preference_accuracy']:.4f}")
            if "exact_match" in tuned:
                line += f"; greedy answer = chosen: {base['exact_match']:.4f} -> {tuned['exact_match']:.4f}"
        return line
