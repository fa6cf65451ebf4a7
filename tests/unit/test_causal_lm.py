"""causal_lm: formats, the loss mask (decoded), bad input, packing without cross-attention, token-normalised
loss under accumulation, token-weighted evaluation, and the head strategy refused."""

from __future__ import annotations

import functools
import json
import logging

import pytest
import torch
from accelerate import Accelerator
from datasets import Dataset, DatasetDict
from helpers import discovered, splits

from peftkit.config import DataArguments, ModelArguments, TrainingArguments
from peftkit.engine import Engine
from peftkit.errors import PeftkitError
from peftkit.evaluation import evaluate
from peftkit.modeling import disable_dropout, load_model, load_tokenizer
from peftkit.strategies import get_strategy
from peftkit.tasks import get_task
from peftkit.tasks.sft_data import IGNORE


def chat(q, a, system=None):
    turns = [{"role": "system", "content": system}] if system else []
    return turns + [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


task_for = functools.partial(discovered, "causal_lm")


@pytest.fixture(scope="module")
def tokenizer(builtin_lm_dir):
    return load_tokenizer(builtin_lm_dir)


def supervised(tokenizer, row):
    return tokenizer.decode([t for t, y in zip(row["input_ids"], row["labels"], strict=True) if y != IGNORE])


def test_only_assistant_turns_carry_loss_end_of_turn_included(tokenizer):
    raw = splits(conv=[chat("What is 2+2?", "Four.") + [{"role": "user", "content": "And 3+3?"},
                                                        {"role": "assistant", "content": "Six."}]])
    task = task_for(raw, messages_column="conv")
    row = task.preprocess(raw, tokenizer)["train"][0]
    assert supervised(tokenizer, row) == "Four.<|im_end|>\nSix.<|im_end|>\n"
    assert tokenizer.decode(row["input_ids"]).startswith("<|im_start|>system")  # the whole chat is the input
    everything = task_for(raw, messages_column="conv", train_on_prompt=True).preprocess(raw, tokenizer)["train"][0]
    assert everything["labels"] == everything["input_ids"]


def test_prompt_completion_text_loss_falls_on_the_completion_and_eos(tokenizer):
    raw = splits(prompt=["Translate to French: cat ->"], completion=[" chat"])
    task = task_for(raw)
    assert task.format == "prompt_completion"
    row = task.preprocess(raw, tokenizer)["train"][0]
    assert supervised(tokenizer, row) == " chat" + tokenizer.eos_token
    assert tokenizer.decode(row["input_ids"]) == "Translate to French: cat -> chat" + tokenizer.eos_token


def test_conversational_prompt_completion_is_rendered_by_the_template(tokenizer):
    raw = splits(prompt=[[{"role": "user", "content": "Hi"}]], completion=[[{"role": "assistant", "content": "Hello"}]])
    row = task_for(raw).preprocess(raw, tokenizer)["train"][0]
    assert supervised(tokenizer, row) == "Hello<|im_end|>\n"


def test_plain_text_trains_on_every_token(tokenizer):
    raw = splits(text=["Once upon a time"])
    task = task_for(raw)
    row = task.preprocess(raw, tokenizer)["train"][0]
    assert task.format == "text" and row["labels"] == row["input_ids"]
    assert tokenizer.decode(row["input_ids"]) == "Once upon a time" + tokenizer.eos_token


def test_columns_are_found_by_name_or_flag_and_a_wrong_one_is_named():
    assert task_for(splits(messages=[chat("q", "a")])).format == "messages"
    assert task_for(splits(q=["x"], a=["y"]), prompt_column="q", completion_column="a").columns == {
        "prompt": "q", "completion": "a"}
    with pytest.raises(PeftkitError, match="Column 'conv' \\(--messages_column\\) is not in the train data"):
        task_for(splits(messages=[chat("q", "a")]), messages_column="conv")
    with pytest.raises(PeftkitError, match="Cannot tell what to train on: the data has columns question, answer"):
        task_for(splits(question=["x"], answer=["y"]))


@pytest.mark.parametrize(("value", "message"), [
    ("just a string", "1 conversation\\(s\\) is not a list of \\{role, content\\} turns"),
    ([{"role": "narrator", "content": "x"}, {"role": "assistant", "content": "y"}], "unknown role\\(s\\) narrator"),
    ([{"role": "user", "content": "x"}], "has no assistant turn"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "  "}], "has an empty assistant turn"),
    ([{"role": "user", "content": None}, {"role": "assistant", "content": "y"}], "has a turn without text content"),
])
def test_bad_conversations_are_refused_with_their_rows(value, message):
    rows = [json.dumps(chat("q", "a")), json.dumps(value)]
    raw = splits(messages=[json.loads(r) for r in rows]) if isinstance(value, list) else None
    if raw is None:  # a column that mixes lists and strings cannot be built by datasets: one bad split
        raw = DatasetDict({"train": Dataset.from_dict({"messages": ["just a string"]})})
    with pytest.raises(PeftkitError, match=message):
        task_for(raw)


def test_an_empty_completion_is_refused():
    with pytest.raises(PeftkitError, match="holds 1 empty value\\(s\\).*an empty completion teaches nothing"):
        task_for(splits(prompt=["a", "b"], completion=["x", ""]))


def test_prompts_longer_than_max_seq_length_are_dropped_and_counted(tokenizer, caplog):
    long_q = "word " * 200
    raw = splits(messages=[chat("short?", "yes"), chat(long_q, "no"), chat("medium " * 20, "answer " * 50)])
    task = task_for(raw, max_seq_length=64)
    with caplog.at_level(logging.WARNING):
        data = task.preprocess(raw, tokenizer)
    assert len(data["train"]) == 2
    assert "1 train example(s) dropped: their prompt fills --max_seq_length 64" in caplog.text
    assert "1 of 3 train examples exceed --max_seq_length 64 tokens and were cut" not in caplog.text
    assert "2 of 3 train examples exceed --max_seq_length 64" in caplog.text
    with pytest.raises(PeftkitError, match="Every train example is longer than --max_seq_length"):
        only_long = splits(messages=[chat(long_q, "no")])
        task_for(only_long, max_seq_length=64).preprocess(only_long, tokenizer)


def test_a_tokenizer_without_a_chat_template_is_named(tokenizer):
    raw = splits(messages=[chat("q", "a")])
    bare = load_tokenizer(tokenizer.name_or_path)
    bare.chat_template = None
    with pytest.raises(PeftkitError, match="tokenizer has no chat template.*--prompt_column/--completion_column"):
        task_for(raw).preprocess(raw, bare)


def tiny(tiny_lm_dir, strategy="full"):
    torch.manual_seed(0)
    task = get_task("causal_lm").build(DataArguments())
    strat = get_strategy(strategy).build(**({"lora_r": 4} if strategy == "lora" else {}))
    model, heads = load_model(task, strat, ModelArguments(tiny_lm_dir))
    return strat.prepare(model, task, heads), task, heads


def test_packed_rows_attend_only_within_their_examples(tiny_lm_dir, tokenizer):
    model, task, _ = tiny(tiny_lm_dir)
    model.eval()
    raw = splits(messages=[chat("first question", "one"), chat("a second, longer question here", "two two"),
                           chat("third", "three")])
    task.discover(raw)
    rows = list(task.preprocess(raw, tokenizer)["train"])
    task.packing = True
    packed = task.preprocess(raw, tokenizer)["train"]
    assert len(packed) == 1 and len(packed[0]["input_ids"]) == sum(len(r["input_ids"]) for r in rows)
    batch = task.collator(tokenizer)([packed[0]])
    with torch.no_grad():
        # use_cache=False as in training (the runner turns the cache off): with a cache, transformers reads
        # position_ids as one sequence
        together = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        start = 0
        for r in rows:
            alone = model(input_ids=torch.tensor([r["input_ids"]])).logits[0]
            torch.testing.assert_close(together[start:start + len(alone)], alone, rtol=1e-4, atol=1e-4)
            start += len(alone)


def test_the_head_strategy_is_refused_for_a_language_model(tiny_lm_dir):
    with pytest.raises(PeftkitError, match="task 'causal_lm' adds none.*Use lora, qlora or dora"):
        tiny(tiny_lm_dir, "head")


def test_lora_on_an_lm_trains_no_copy_of_the_output_layer(tiny_lm_dir):
    model, _, heads = tiny(tiny_lm_dir, "lora")
    assert heads == []
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def lm_data(tokenizer, n=6):
    answers = ["yes", "a much longer answer with many more tokens in it", "no", "ok then", "sure", "maybe not"]
    raw = splits(messages=[chat(f"question {i}", answers[i % len(answers)]) for i in range(n)])
    task = get_task("causal_lm").build(DataArguments())
    task.discover(raw)
    return task, task.preprocess(raw, tokenizer)


def test_accumulation_normalises_by_the_supervised_tokens_of_the_whole_step(tiny_lm_dir, tokenizer, tmp_path):
    """One batch of 4 and two micro-batches of 2 with very different supervised-token counts give the same
    update: each micro-batch's mean loss is weighted by its share of the step's tokens."""
    task, data = lm_data(tokenizer, 4)
    common = dict(max_steps=1, warmup_ratio=0.0, optimizer="sgd", momentum=0.0, report_to="none", save_steps=-1,
                  max_grad_norm=0.0)
    models = []
    for size, accumulation in ((4, 1), (2, 2)):
        model, _, _ = tiny(tiny_lm_dir)
        disable_dropout(model)
        args = TrainingArguments(output_dir=str(tmp_path / str(size)), per_device_train_batch_size=size,
                                 gradient_accumulation_steps=accumulation, **common)
        acc = Accelerator(gradient_accumulation_steps=accumulation)
        eng = Engine(acc, task, model, DatasetDict({"train": data["train"], "validation": data["train"]}),
                     task.collator(tokenizer), args, lr=0.5, output_dir=tmp_path / str(size), use_feature_cache=False)
        eng.loader = lambda ds, train, eng=eng, size=size: torch.utils.data.DataLoader(
            ds, batch_size=size, shuffle=False, collate_fn=eng.collator, generator=torch.Generator())  # same order
        eng.fit()
        models.append(model)
    units = [task.loss_units(task.collator(tokenizer)(list(data["train"])[i:i + 2])) for i in (0, 2)]
    assert units[0] != units[1]  # the micro-batches differ, so an unweighted mean of means would differ
    for (name, p), q in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


def test_evaluation_weights_every_supervised_token_once_whatever_the_batching(tiny_lm_dir, tokenizer):
    model, task, _ = tiny(tiny_lm_dir)
    task, data = lm_data(tokenizer, 5)
    collate = task.collator(tokenizer)
    results = [evaluate(Accelerator(), task, model, torch.utils.data.DataLoader(data["train"], batch_size=size,
                                                                                 collate_fn=collate))
               for size in (1, 2, 5)]
    batch = collate(list(data["train"]))
    with torch.no_grad():
        expected = model(**batch).loss.item()  # the model's own mean over every supervised token at once
    for metrics in results:
        assert metrics["loss"] == pytest.approx(expected, rel=1e-5)
        assert metrics["perplexity"] == pytest.approx(torch.exp(torch.tensor(expected)).item(), rel=1e-5)
