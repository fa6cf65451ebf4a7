"""What differs when several processes train one model: gathering, restoring and agreeing.

Every function here is collective (all processes call it) and correct with one process too.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object


def sharded(acc: Accelerator) -> bool:
    """FSDP or DeepSpeed: optimizer state (and maybe weights) live in pieces across processes."""
    return acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def gather_trainable(acc: Accelerator, model, names: set[str]) -> dict[str, torch.Tensor]:
    """The trainable weights, whole, on the main process (empty elsewhere). Gathers FSDP / ZeRO-3 shards."""
    state = acc.get_state_dict(model)
    if not acc.is_main_process:
        return {}
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items() if k in names}


def restore_trainable(acc: Accelerator, model, names: set[str], tensors: dict[str, torch.Tensor]) -> None:
    """Load weights held by the main process into every process's model. The others need not share its disk
    (several machines): the weights travel over the process group."""
    if acc.distributed_type == DistributedType.FSDP:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
        set_model_state_dict(model, tensors if acc.is_main_process else {}, options=options)
        return
    unwrapped = acc.unwrap_model(model)
    params = [p for n, p in unwrapped.named_parameters() if n in names]
    zero3 = acc.distributed_type == DistributedType.DEEPSPEED and any(hasattr(p, "ds_id") for p in params)
    gathered = nullcontext()
    if zero3:  # ZeRO-3 partitions parameters: gather, let rank 0 write, re-partition on exit
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(params, modifier_rank=0)
    with gathered:
        if acc.is_main_process:
            unwrapped.load_state_dict(tensors, strict=False)
        if acc.num_processes > 1 and not zero3:
            for param in params:
                torch.distributed.broadcast(param.data, src=0)
    acc.wait_for_everyone()


def save_model(acc: Accelerator, model, output_dir: Path, tokenizer) -> None:
    """The trained model (adapter or weights) and tokenizer as a ``save_pretrained`` directory, written by the
    main process from the gathered state dict."""
    state = acc.get_state_dict(model)
    acc.unwrap_model(model).save_pretrained(output_dir, is_main_process=acc.is_main_process, state_dict=state)
    if acc.is_main_process:
        tokenizer.save_pretrained(output_dir)
    acc.wait_for_everyone()


def any_process(acc: Accelerator, flag: int) -> int:
    """The largest ``flag`` over all processes, so that all take the same branch (stop, skip, save)."""
    if acc.num_processes == 1:
        return flag
    value = torch.tensor(flag, device=acc.device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return int(value.item())


def gather_objects(acc: Accelerator, obj) -> list:
    """``obj`` from every process, in rank order (small picklable values only: RNG states)."""
    return gather_object([obj]) if acc.num_processes > 1 else [obj]


def on_main(acc: Accelerator, fn):
    """Run ``fn`` on the main process only (file checks and writes) and give every process its outcome: its
    result (which must be picklable), or its PeftkitError, raised everywhere so that all processes stop
    together rather than the others waiting forever at the next collective."""
    from peftkit.errors import PeftkitError

    result, message = None, None
    if acc.is_main_process:
        try:
            result = fn()
        except PeftkitError as exc:
            message = str(exc)
    result, message = gather_objects(acc, (result, message))[0]
    if message is not None:
        raise PeftkitError(message)
    return result


def sum_processes(acc: Accelerator, value: int) -> int:
    """``value`` summed over all processes (e.g. the supervised tokens of one optimizer step)."""
    if acc.num_processes == 1:
        return value
    total = torch.tensor(value, device=acc.device, dtype=torch.long)
    torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
    return int(total.item())
