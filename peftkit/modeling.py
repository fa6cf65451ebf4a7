"""Loading models and tokenizers for a task and strategy, and finding their parts (head, layers)."""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoTokenizer

from peftkit import assets, catalogue
from peftkit.config import BUILTIN_LM, BUILTIN_MODEL, BUILTIN_VISION_MODEL, UNFREEZE_BY, ModelArguments
from peftkit.errors import PeftkitError, check

logger = logging.getLogger(__name__)


def resolve_model_path(name: str) -> str:
    """Map the built-in aliases to their directories; anything else is a Hub name or local path."""
    if name == BUILTIN_MODEL:
        return str(assets.builtin_model_path())
    if name == BUILTIN_VISION_MODEL:
        return str(assets.builtin_vision_model_path())
    if name == BUILTIN_LM:
        return str(assets.builtin_lm_path())
    if name.startswith(catalogue.PREFIX):  # shapes only: a directory holding the entry's config.json
        return str(catalogue.write(name, assets.cache_dir() / "catalogue" / name.removeprefix(catalogue.PREFIX)))
    return os.path.expanduser(name) if name.startswith("~") else name  # a config file's ~ is the shell's too


@functools.cache
def hub_unreachable() -> bool:
    """One quick request, no retries. huggingface_hub retries a failed connection five times (about 25 s of
    warnings) before every load; once the Hub is known to be out of reach, loads read its local cache only."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return True
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=5)
    except Exception:  # noqa: BLE001 - any failure to connect means: work from the cache
        logger.info("The Hugging Face Hub (%s) is out of reach: Hub names load from the local cache only.",
                    constants.ENDPOINT)
        return True
    return False


def source_kwargs(path: str) -> dict[str, Any]:
    """``from_pretrained`` options for ``path``: a Hub name is read from the cache alone when the Hub is out of
    reach."""
    return {"local_files_only": True} if not Path(path).exists() and hub_unreachable() else {}


def backbone(model: nn.Module) -> nn.Module:
    """The pretrained body of a task model (``model.bert``, ``model.model``, ...)."""
    prefix = getattr(model, "base_model_prefix", "")
    body = getattr(model, prefix, None)
    check(isinstance(body, nn.Module), f"Cannot find the backbone of {type(model).__name__} "
          f"(base_model_prefix={prefix!r}).")
    return body


def head_module_names(model: nn.Module) -> list[str]:
    """Top-level modules with parameters that are not the backbone: the new task head.

    Generic across architectures: ``classifier`` for BERT/RoBERTa, ``score`` for Llama/GPT-2,
    ``pre_classifier`` + ``classifier`` for DistilBERT.
    """
    body = backbone(model)
    names = [name for name, child in model.named_children()
             if child is not body and any(True for _ in child.parameters())]
    check(bool(names), f"{type(model).__name__} has no task head outside its backbone.")
    return names


def is_head_parameter(name: str, head_names: list[str]) -> bool:
    """Whether parameter ``name`` belongs to the task's head: ``classifier.weight``, a vision model's
    ``timm_model.classifier.bias``, or peft's ``modules_to_save`` copy of either."""
    leaves = {h.rsplit(".", 1)[-1] for h in head_names}
    return bool(set(name.split(".")) & leaves)


def transformer_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The stack of transformer blocks: the backbone's ModuleList holding the most parameters."""
    best, best_size = None, 0
    # Transformers keep their blocks in a ModuleList; timm's CNNs keep their stages in an nn.Sequential.
    for kind in (nn.ModuleList, nn.Sequential):
        for name, module in backbone(model).named_modules():
            if isinstance(module, kind) and len(module) > (0 if kind is nn.ModuleList else 1):
                size = sum(p.numel() for p in module.parameters())
                if size > best_size:
                    best, best_size = (name, module), size
        if best is not None:
            break
    check(best is not None, f"Cannot find the transformer layers of {type(model).__name__}.")
    return best


def top_backbone_parameters(model: nn.Module, n: int) -> list[nn.Parameter]:
    """Parameters of the top ``n`` layers and of everything registered after them (pooler, final norm)."""
    _, layers = transformer_layers(model)
    check(n <= len(layers), f"--num_trainable_layers {n} exceeds the model's {len(layers)} layers.")
    params = list(backbone(model).parameters())
    ids = [id(p) for p in params]
    if n > 0:
        start = ids.index(id(next(layers[len(layers) - n].parameters())))
    else:
        start = ids.index(id(list(layers.parameters())[-1])) + 1
    return params[start:]


def layer_depths(model: nn.Module) -> dict[str, int]:
    """Each trainable parameter's depth, counted in transformer layers from the top: the head and whatever sits
    above the layers 0, the top layer 1, the embeddings and everything below the layers one more than the
    bottom layer."""
    prefix = getattr(model, "base_model_prefix", "")
    layers_name, layers = transformer_layers(model)
    layers_prefix = f"{prefix}.{layers_name}."
    names = [n for n, _ in model.named_parameters()]
    first = next(i for i, n in enumerate(names) if n.startswith(layers_prefix))
    depths = {}
    for i, (name, param) in enumerate(model.named_parameters()):
        if not param.requires_grad:
            continue
        if name.startswith(layers_prefix):
            depths[name] = len(layers) - int(name[len(layers_prefix):].split(".")[0])
        else:
            depths[name] = len(layers) + 1 if i < first else 0
    return depths


def layerwise_lr_scales(model: nn.Module, decay: float) -> dict[str, float]:
    """Layer-wise learning-rate decay: ``decay ** depth`` for each trainable parameter (see layer_depths)."""
    if decay == 1.0:
        return {}
    return {name: decay**depth for name, depth in layer_depths(model).items()}




def unfreeze_schedule(model: nn.Module) -> dict[str, float]:
    """Gradual unfreezing (as in ULMFiT): when each trainable parameter starts to train, as a fraction of the
    run's optimizer steps. The head and what sits above the layers train from the start; then one layer more
    from the top joins at even intervals, the deepest trainable group (the embeddings, for full) at UNFREEZE_BY."""
    depths = layer_depths(model)
    deepest = max(depths.values(), default=0)
    return {name: UNFREEZE_BY * depth / deepest if deepest else 0.0 for name, depth in depths.items()}


def disable_dropout(model: nn.Module) -> int:
    """Zero every dropout in ``model``: ``nn.Dropout`` modules and the float probabilities that attention
    implementations read from module attributes (``dropout_prob``, ``attention_dropout``). Returns how many."""
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p, changed = 0.0, changed + 1
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float) and value > 0:
                setattr(module, name, 0.0)
                changed += 1
    return changed


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total). A 4-bit bitsandbytes tensor stores two weights per byte, so it counts double."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n *= 2 * getattr(param, "quant_storage", torch.uint8).itemsize
        total += n
        trainable += n if param.requires_grad else 0
    return trainable, total


_WARNED_REMOTE: set[str] = set()


def remote_code_of(path: str | Path) -> list[str]:
    """The custom classes a model directory's config.json and tokenizer_config.json map to (their ``auto_map``):
    the Python code ``trust_remote_code`` lets transformers run."""
    found = []
    for name in ("config.json", "tokenizer_config.json"):
        try:
            auto_map = json.loads((Path(path) / name).read_text()).get("auto_map") or {}
        except (OSError, ValueError, AttributeError):
            continue
        found += [f"{key} -> {value}" for key, value in auto_map.items()]
    return found


def warn_remote_code(model_args: ModelArguments, path: str) -> None:
    """Once per model: with --trust_remote_code on, say which code may run."""
    if not model_args.trust_remote_code or path in _WARNED_REMOTE:
        return
    _WARNED_REMOTE.add(path)
    code = remote_code_of(path)
    logger.warning("--trust_remote_code is on: transformers may run Python code from %s%s.", path,
                   f" ({'; '.join(code)})" if code else " (its config names no custom code, so none is expected)")


def load_config(model_args: ModelArguments, **config_kwargs: Any):
    path = resolve_model_path(model_args.model_name_or_path)
    warn_remote_code(model_args, path)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=model_args.trust_remote_code,
                                          **source_kwargs(path), **config_kwargs)
    except Exception as exc:  # noqa: BLE001
        if not Path(path).exists() and looks_like_path(path):
            raise PeftkitError(f"Cannot load model {model_args.model_name_or_path!r} (--model_name_or_path): no such "
                               f"directory ({Path(path).absolute()}). Check the path.") from exc
        hint = ("The directory holds no readable config.json." if Path(path).exists() else
                "No such local directory, and the Hub is out of reach and its local cache does not hold it."
                if hub_unreachable() else "No such local directory, and the Hub does not know that name.")
        raise PeftkitError(f"Cannot load model {model_args.model_name_or_path!r}: {hint} Pass "
                           "--model_name_or_path with a local model directory (or a Hub name where the Hub "
                           f"is reachable). Detail: {str(exc).splitlines()[0][:200]}") from exc


def looks_like_path(name: str) -> bool:
    """``name`` can only be a local path, not a Hub name (``model`` or ``owner/model``, which never start with a dot
    or hold a backslash): it starts like a path, has more than one slash, or its first part is a local directory."""
    if name.startswith(("/", ".", "~")) or name.endswith("/") or "\\" in name or name.count("/") > 1:
        return True
    return "/" in name and Path(name.split("/", 1)[0]).is_dir()


def load_tokenizer(source: ModelArguments | str | Path):
    """The tokenizer of a model (``ModelArguments``) or of a saved run directory."""
    if isinstance(source, ModelArguments):
        path, trust = resolve_model_path(source.tokenizer_name or source.model_name_or_path), source.trust_remote_code
        if source.random_init and source.tokenizer_name is None and not has_tokenizer(path):
            path = synthetic_tokenizer(source)
    else:
        path, trust = str(source), False
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust, **source_kwargs(path))
    except Exception as exc:  # noqa: BLE001
        advice = ("Pass --tokenizer_name with a directory that has one." if isinstance(source, ModelArguments) else
                  "The run directory's tokenizer files are damaged or missing: restore them from a copy of the run "
                  "(or from the base model's own), or train again.")
        raise PeftkitError(f"Cannot load a tokenizer from {path!r}: {str(exc).splitlines()[0][:200]}. "
                           + advice) from exc
    if tokenizer.pad_token is None:  # decoder LMs often ship without one; batching needs it
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def has_tokenizer(path: str) -> bool:
    directory = Path(path)
    return not directory.is_dir() or any((directory / name).exists() for name in (
        "tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model", "preprocessor_config.json"))


def synthetic_tokenizer(model_args: ModelArguments) -> str:
    """For --random_init on a directory with no tokenizer (a config.json alone, a catalogue entry): a built-in
    model's tokenizer whose ids all fit the model's vocabulary (SmolLM2's 49,152, else MiniLM's 30,522). The
    weights are random anyway: any tokenizer of a fitting size measures the same memory and speed."""
    config = load_config(model_args)
    vocab = getattr(config, "vocab_size", None) or getattr(getattr(config, "text_config", None), "vocab_size", 0)
    for name, size in ((BUILTIN_LM, 49152), (BUILTIN_MODEL, 30522)):
        if vocab >= size:
            logger.info("No tokenizer in %s: with --random_init, the tokenizer of %s is used (%d ids, within the "
                        "model's %d).", model_args.model_name_or_path, name, size, vocab)
            return resolve_model_path(name)
    raise PeftkitError(f"{model_args.model_name_or_path} has no tokenizer and its vocabulary ({vocab}) is smaller "
                       "than the built-in tokenizers': pass --tokenizer_name.")


def planned_head_names(task: Any, config) -> list[str]:
    """Head module names, found on an empty (meta-device) model before any weight is loaded.

    Quantization needs them up front: the new head must stay out of 4-bit.
    """
    with torch.device("meta"):
        skeleton = task.auto_class.from_config(config)
    return task.new_modules(skeleton)


def load_model(task: Any, strategy: Any, model_args: ModelArguments, processor=None):
    """Load the pretrained model with the task's new modules (a head for its labels), ready for the strategy;
    returns ``(model, names of the new modules)``."""
    config_kwargs = task.model_kwargs()
    # A pretrained head of another size (an ImageNet classifier) is replaced by a new one when the task asks.
    replace_head = config_kwargs.pop("ignore_mismatched_sizes", False)
    config = load_config(model_args, **config_kwargs)
    if getattr(config, "label_names", None) is not None and "id2label" in config_kwargs:
        # TimmWrapperConfig saves class names as `label_names` and keeps the base's (ImageNet's) there unless told:
        # plain transformers (pipeline) would then name a run's classes after ImageNet's.
        config.label_names = list(config_kwargs["id2label"].values())
    try:
        task.auto_class._model_mapping[type(config)]  # noqa: B018 - a lookup that raises when missing
    except KeyError:
        raise PeftkitError(
            f"Model type {config.model_type!r} has no {task.kind or task.name} class in transformers, so "
            f"it cannot be used for task {task.name!r}. Pick a model with one (e.g. BERT, RoBERTa, Llama)."
        ) from None
    head_names = planned_head_names(task, config)
    path = resolve_model_path(model_args.model_name_or_path)
    kwargs = strategy.load_kwargs(head_names)
    if replace_head:
        kwargs["ignore_mismatched_sizes"] = True
    # transformers 5 loads a checkpoint in its own dtype unless told; most LLM checkpoints are bfloat16, and
    # full fine-tuning would then train half-precision weights without the user asking. A strategy that needs
    # one dtype throughout (FSDP-QLoRA) sets its own.
    kwargs.setdefault("dtype", model_args.torch_dtype if model_args.torch_dtype == "auto"
                      else getattr(torch, model_args.torch_dtype))
    if model_args.random_init:
        model = random_model(task, config, model_args, kwargs)
    else:
        model = task.auto_class.from_pretrained(
            path, config=config, trust_remote_code=model_args.trust_remote_code, **source_kwargs(path), **kwargs
        )
    if "quantization_config" in kwargs and next(model.parameters()).device.type == "cpu":
        release_checkpoint_mapping(model)
        for module in model.modules():
            if type(module).__name__ == "Linear4bit":
                # On a CPU with AVX512-BF16, bitsandbytes (0.50) repacks a 4-bit weight for an inference kernel at
                # the first forward pass in eval mode without gradients (an evaluation), and that kernel has no
                # backward: every later training step would pass no gradient through the layer. Every load keeps
                # the format that trains, so that evaluation during training and after it compute alike.
                module.support_avx512bf16_for_cpu = False
    pad = getattr(processor, "pad_token_id", None)
    if getattr(model.config, "pad_token_id", None) is None and pad is not None:
        model.config.pad_token_id = pad
    return model, head_names


def release_checkpoint_mapping(model: nn.Module) -> None:
    """Copy the weights bitsandbytes left unquantized on a CPU model (embeddings, norms, the head) out of the
    checkpoint file they are mapped from. They are views of the memory-mapped safetensors file, so the whole file
    stayed mapped after loading, and the float32 weights that were read to be quantized stayed resident with it:
    on Qwen2.5-0.5B's shapes, 1.47 GiB of resident memory that training never reads (1.08 GiB after the copy)."""
    with torch.no_grad():
        for module in model.modules():
            for param in module.parameters(recurse=False):
                if type(param).__name__ not in ("Params4bit", "Int8Params"):
                    param.data = param.data.clone()
            for name, buffer in module.named_buffers(recurse=False):
                if buffer is not None:
                    module._buffers[name] = buffer.clone()


RANDOM_INIT_SEED = 0  # --random_init's weights: one synthetic base per configuration


def random_model(task: Any, config, model_args: ModelArguments, kwargs: dict[str, Any]):
    """The model of ``config`` with random weights: the architecture's own initialisation from a fixed seed, so
    that the same config gives the same synthetic base in training, `predict`, `eval` and `merge` (the run's
    adapter is then read on the base it was trained on), and the run's own random generators are left as they
    were. A strategy that loads differently (a quantized base) gets the random weights through a checkpoint
    written once per configuration in peftkit's cache, loaded as a trained one would be."""
    dtype = kwargs.get("dtype")
    dtype = None if dtype == "auto" else dtype
    load_as_usual = {k: v for k, v in kwargs.items() if k != "dtype"}

    def build():
        with torch.random.fork_rng():
            torch.manual_seed(RANDOM_INIT_SEED)
            return task.auto_class.from_config(config, dtype=dtype, trust_remote_code=model_args.trust_remote_code)

    if not load_as_usual:
        return build()
    import hashlib

    key = hashlib.sha256((config.to_json_string() + str(RANDOM_INIT_SEED)).encode()).hexdigest()[:16]
    directory = assets.cache_dir() / "random_init" / key
    if not directory.is_dir():  # written beside, then renamed: an interrupted write is never taken for a whole one
        import shutil

        partial = directory.with_name(f"{key}.partial-{os.getpid()}")
        model = build()
        model.save_pretrained(partial)  # safetensors
        del model
        try:
            partial.rename(directory)
        except OSError:  # another process wrote it first
            shutil.rmtree(partial, ignore_errors=True)
    return task.auto_class.from_pretrained(directory, config=config, trust_remote_code=model_args.trust_remote_code,
                                           **kwargs)


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each layer's activations in the backward pass instead of keeping them (--gradient_checkpointing),
    non-reentrant: it reaches adapters and heads behind frozen embeddings with no inputs that require grad, and
    gives the same loss and gradients as without it (tests/unit/test_checkpointing.py)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5's name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def check_trainable_dtype(model: nn.Module, mixed_precision: str | None, torch_dtype: str) -> None:
    """Refuse float16 trainable weights under fp16 mixed precision (its gradient scaler cannot unscale float16
    gradients), and warn about any other half-precision trainable weights: AdamW updates smaller than half
    precision's resolution are lost."""
    half = {p.dtype for p in model.parameters() if p.requires_grad and p.dtype in (torch.float16, torch.bfloat16)}
    if not half:
        return
    check(not (torch.float16 in half and mixed_precision == "fp16"),
          f"--torch_dtype {torch_dtype} loaded trainable weights in float16, and fp16 mixed precision cannot train "
          "float16 weights (its gradient scaler refuses float16 gradients). Use --torch_dtype float32 (the "
          "default) with --fp16, or --bf16.")
    names = ", ".join(sorted(str(d).removeprefix("torch.") for d in half))
    count = sum(p.numel() for p in model.parameters() if p.requires_grad and p.dtype in half)
    logger.warning("%s trainable weights are stored in %s (--torch_dtype %s): updates below that type's "
                   "resolution are lost. For full-precision training weights with half-precision compute, use "
                   "--torch_dtype float32 with --bf16.", f"{count:,}", names, torch_dtype)
