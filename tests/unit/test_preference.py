"""preference: token-exact prompt/answer boundaries under chat templates, truncation that keeps the answer, pairs with
nothing to prefer, the left-padded batch, the reference (the base with adapters off; a frozen copy for full), the
losses against their formulas, and bad input."""

from __future__ import annotations

import functools
import logging
import math

import pytest
import torch
from datasets import Dataset, DatasetDict
from helpers import discovered, splits

from peftkit.errors import PeftkitError
from peftkit.modeling import load_tokenizer
from peftkit.tasks.preference import answer_logps
from peftkit.tasks.preference_data import encode_pair, extract_prompt

USER = [{"role": "user", "content": "Is 7 prime? One word."}]
YES, NO = [{"role": "assistant", "content": "Yes"}], [{"role": "assistant", "content": "No"}]
# SmolLM2's template, but every assistant turn it renders after the prompt starts with an (empty) thinking block,
# as reasoning models' templates do: tokens the generation prompt does not contain.
THINKING = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}<think>\n\n"
            "</think>\n\n{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


task_for = functools.partial(discovered, "preference")


@pytest.fixture(scope="module")
def tokenizer(builtin_lm_dir):
    return load_tokenizer(builtin_lm_dir)


def test_conversational_answers_follow_the_prompt_tokens_exactly(tokenizer):
    pair = encode_pair(tokenizer, USER, YES, NO, 128)
    prompt = tokenizer.apply_chat_template(USER, tokenize=False, add_generation_prompt=True)
    assert pair["input_ids"] == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(pair["chosen_ids"]) == "Yes<|im_end|>\n"
    assert tokenizer.decode(pair["rejected_ids"]) == "No<|im_end|>\n"
    whole = tokenizer.apply_chat_template(USER + YES, tokenize=False)
    assert tokenizer.decode(pair["input_ids"] + pair["chosen_ids"]) == whole


def test_a_template_that_adds_tokens_to_the_assistant_turn_keeps_the_prompt_whole(tokenizer):
    tokenizer = load_tokenizer(tokenizer.name_or_path)
    tokenizer.chat_template = THINKING
    pair = encode_pair(tokenizer, USER, YES, NO, 128)
    prompt = tokenizer.apply_chat_template(USER, tokenize=False, add_generation_prompt=True)
    assert pair["input_ids"] == tokenizer(prompt, add_special_tokens=False)["input_ids"]  # the same in both rows
    assert tokenizer.decode(pair["chosen_ids"]) == "<think>\n\n</think>\n\nYes<|im_end|>\n"
    assert tokenizer.decode(pair["rejected_ids"]) == "<think>\n\n</think>\n\nNo<|im_end|>\n"


def test_a_template_that_rewrites_the_prompt_is_refused(tokenizer):
    tokenizer = load_tokenizer(tokenizer.name_or_path)
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}{{ messages | length }}: {{ m['content'] }}\n"
                               "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(PeftkitError, match="renders a conversation's prompt differently once an answer follows"):
        encode_pair(tokenizer, USER, YES, NO, 128)


def test_text_answers_are_tokenized_apart_from_the_prompt_and_end_with_eos(tokenizer):
    pair = encode_pair(tokenizer, "The capital of France is", " Paris", " Lyon", 128)
    assert pair["input_ids"] == tokenizer("The capital of France is", add_special_tokens=False)["input_ids"]
    assert pair["chosen_ids"] == tokenizer(" Paris", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert tokenizer.decode(pair["rejected_ids"]) == " Lyon" + tokenizer.eos_token


def test_an_implicit_prompt_is_what_both_share():
    assert extract_prompt("Q: 2+2? A: four", "Q: 2+2? A: five") == ("Q: 2+2? A:", " four", " five")
    assert extract_prompt(USER + YES, USER + NO) == (USER, YES, NO)
    raw = splits(chosen=[USER + YES], rejected=[USER + NO])
    task = task_for(raw)
    assert task.columns["prompt"] is None and task.conversational


def test_truncation_cuts_the_prompt_from_its_start_before_any_answer(tokenizer):
    long_prompt = "word " * 200
    pair = encode_pair(tokenizer, long_prompt, " yes", " no", 64)
    assert len(pair["input_ids"]) + len(pair["chosen_ids"]) <= 64 and pair["chosen_ids"][-1] == tokenizer.eos_token_id
    full = tokenizer(long_prompt, add_special_tokens=False)["input_ids"]
    assert pair["input_ids"] == full[len(full) - len(pair["input_ids"]):]  # the end of the prompt is kept
    long_answer = " yes" * 200
    pair = encode_pair(tokenizer, long_prompt, long_answer, " no", 64)
    assert len(pair["input_ids"]) == 64 // 4 and len(pair["chosen_ids"]) == 48  # the prompt keeps a quarter


def test_pairs_with_nothing_to_prefer_are_reported_and_left_out(tokenizer, caplog):
    raw = splits(prompt=["A " * 20, "B", "C"], chosen=[" x" * 100, " y", " z"],
                 rejected=[" x" * 100 + " w", " y", " q"])
    task = task_for(raw, max_seq_length=32)
    with caplog.at_level(logging.WARNING):
        data = task.preprocess(raw, tokenizer)
    assert len(data["train"]) == 1
    assert "2 of 3 train pairs left out: the same chosen and rejected answer (example 0, example 1)" in caplog.text
    assert "1 lost the start of their prompt, 1 the end of their answers" in caplog.text


@pytest.mark.parametrize("share_prompt", [True, False])
def test_a_batch_scores_each_answer_as_if_alone(tiny_lm_dir, tokenizer, share_prompt):
    from transformers import AutoModelForCausalLM

    raw = splits(prompt=["A short prompt", "A much longer prompt than the other one"], chosen=[" yes", " no"],
                 rejected=[" no no no", " yes"])
    task = task_for(raw)
    rows = task.preprocess(raw, tokenizer)["train"]
    batch = task.collator(tokenizer)(list(rows))
    assert batch["input_ids"].shape[0] == 2 and batch["task_answer_ids"].shape[0] == 4
    assert batch["labels"].tolist() == [0, 0] and not batch["attention_mask"][0, 0]  # prompts padded on the left
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    together = answer_logps(model, batch, share_prompt)
    for i, row in enumerate(list(rows) * 2):
        answer = row["chosen_ids"] if i < 2 else row["rejected_ids"]
        ids = torch.tensor([row["input_ids"] + answer])
        logps = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
        alone = logps[-len(answer):].gather(-1, ids[0, -len(answer):, None]).sum()
        assert torch.allclose(together[i], alone, atol=1e-4)


def test_sharing_the_prompt_gives_the_gradients_of_whole_rows(tiny_lm_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    raw = splits(prompt=["Is 7 prime?", "Is the number eight a prime?"], chosen=[" yes", " no, it is not"],
                 rejected=[" no", " yes"])
    task = task_for(raw, loss_type="simpo")
    batch = task.collator(tokenizer)(list(task.preprocess(raw, tokenizer)["train"]))
    grads = []
    for share in (True, False):
        model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
        task.share_prompt = share
        task.forward(model, batch).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], rtol=1e-4, atol=2e-5, msg=name)  # float rounding


def one_step(model, task, batch):
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    task.forward(model, batch).loss.backward()
    optimizer.step()


def test_the_reference_is_the_base_with_adapters_off_and_a_frozen_copy_for_full(tiny_lm_dir, tokenizer):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    raw = splits(prompt=["Is 7 prime?", "Is 8 prime?"], chosen=[" yes", " no"], rejected=[" no", " yes"])
    task = task_for(raw)
    batch = task.collator(tokenizer)(list(task.preprocess(raw, tokenizer)["train"]))
    base = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    with torch.no_grad():
        expected = answer_logps(base, batch)
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_lm_dir),
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    task.prepare_model(lora, "model")
    assert task.reference is None  # no copy: the adapters switch off
    one_step(lora, task, batch)
    assert torch.allclose(task.reference_logps(lora, batch), expected, atol=1e-5)
    assert not torch.allclose(answer_logps(lora, batch), expected, atol=1e-3)  # the policy did move
    assert lora.training  # the reference's eval mode does not stick
    full = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    task.prepare_model(full, "model")
    one_step(full, task, batch)
    assert torch.allclose(task.reference_logps(full, batch), expected, atol=1e-5)
    assert not torch.allclose(answer_logps(full, batch), expected, atol=1e-3)


def test_the_losses_follow_their_formulas():
    logps, tokens = torch.tensor([-2.0, -3.0, -4.0, -1.0]), torch.tensor([2.0, 3.0, 4.0, 1.0])
    reference = torch.tensor([-3.0, -3.0, -3.0, -3.0])
    raw = splits(prompt=["p"], chosen=[" a"], rejected=[" b"])
    dpo = task_for(raw)
    losses, chosen, rejected = dpo.pair_losses(logps, tokens, reference)
    margin = ((-2 + 3) - (-4 + 3), (-3 + 3) - (-1 + 3))  # log-ratio of chosen minus rejected
    assert losses.tolist() == pytest.approx([math.log1p(math.exp(-0.1 * m)) for m in margin])
    assert chosen.tolist() == pytest.approx([0.1, 0.0]) and rejected.tolist() == pytest.approx([-0.1, 0.2])
    ipo = task_for(raw, loss_type="ipo", beta=0.5)
    per_token = ((1 / 2) - (-1 / 4), 0 - (2 / 1))
    assert ipo.pair_losses(logps, tokens, reference)[0].tolist() == pytest.approx([(m - 1) ** 2 for m in per_token])
    simpo = task_for(raw, loss_type="simpo")
    assert simpo.beta == 2.0
    losses, chosen, rejected = simpo.pair_losses(logps, tokens, None)
    assert chosen.tolist() == pytest.approx([-2.0, -2.0]) and rejected.tolist() == pytest.approx([-2.0, -2.0])
    assert losses.tolist() == pytest.approx([math.log1p(math.exp(1.0))] * 2)  # margin 0, gamma 1
    assert dpo.pair_losses(logps, tokens, None)[0].isnan().all()  # no reference: no dpo loss, never a silent 0


def test_repeats_and_empty_answers_never_make_a_silent_zero_loss(tiny_lm_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    raw = splits(prompt=["Is 7 prime?", "Is 8 prime?"], chosen=[" yes", " no"], rejected=[" no", " yes"])
    task = task_for(raw, loss_type="simpo")
    batch = task.collator(tokenizer)(list(task.preprocess(raw, tokenizer)["train"]))
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    whole = task.forward(model, batch)
    batch["labels"][1] = -100  # a repeat that even batches added: it does not count
    assert task.loss_units(batch) == 1
    assert torch.allclose(task.forward(model, batch).loss, whole.pair_losses[0])
    batch["task_answer_mask"][0] = False
    with pytest.raises(PeftkitError, match="without answer tokens"):
        task.forward(model, batch)


@pytest.mark.parametrize(("columns", "flags", "message"), [
    ({"prompt": ["p"], "good": [" a"], "rejected": [" b"]}, {},
     "Column 'chosen' \\(--chosen_column\\) is not in the train data. Its columns are: prompt, good, rejected"),
    ({"prompt": ["p", "q"], "chosen": [" a", " "], "rejected": [" b", " c"]}, {},
     "1 pair\\(s\\) whose chosen \\('chosen'\\) is empty: example 1"),
    ({"prompt": [USER], "chosen": [[{"role": "user", "content": "x"}]], "rejected": [NO]}, {},
     "chosen \\('chosen'\\) has no assistant turn that says something"),
    ({"prompt": ["p"], "chosen": [" a"], "rejected": [" b"]}, {"loss_type": "kto"}, "--loss_type 'kto' is not one of"),
    ({"prompt": [USER], "chosen": ["a"], "rejected": ["b"]}, {}, "holds conversations while the answers are text"),
])
def test_bad_data_and_flags_are_named(columns, flags, message):
    with pytest.raises(PeftkitError, match=message):
        task_for(splits(**columns), **flags)


def test_the_same_answers_everywhere_and_a_model_without_a_template_are_refused(tokenizer):
    raw = splits(prompt=["p", "q"], chosen=[" a", " b"], rejected=[" a", " b"])
    with pytest.raises(PeftkitError, match="No train pair has two different answers to learn from: 2 have the same"):
        task_for(raw).preprocess(raw, tokenizer)
    raw = splits(prompt=[USER], chosen=[YES], rejected=[NO])
    plain = load_tokenizer(tokenizer.name_or_path)
    plain.chat_template = None
    with pytest.raises(PeftkitError, match="has no chat template"):
        task_for(raw).preprocess(raw, plain)


def test_evaluation_data_must_be_in_the_runs_format():
    task = task_for(splits(prompt=["p"], chosen=[" a"], rejected=[" b"]))
    with pytest.raises(PeftkitError, match="trained on text pairs, and this data holds conversations"):
        task.check_known_labels(DatasetDict({"test": Dataset.from_dict(
            {"prompt": [USER], "chosen": [YES], "rejected": [NO]})}))
