"""peftkit: parameter-efficient fine-tuning, orchestrated over transformers, peft and accelerate."""

from peftkit._version import __version__

__all__ = ["__version__", "load_run"]


def load_run(run_dir, trust_remote_code: bool = False, skip_base_check: bool = False):
    """Load a trained run directory: ``(model, processor, config)`` (the processor is the tokenizer for text
    tasks); see :mod:`peftkit.run_dir`. ``trust_remote_code``: let transformers run the base model's own Python
    code (a run trained with it needs it again; the run's files never grant it). ``skip_base_check``: load an
    adapter whose run records no fingerprint of its base."""
    from peftkit.console import quiet_known_noise

    quiet_known_noise()  # first: importing run_dir imports bitsandbytes, which warns as it loads on some CPUs
    from peftkit.run_dir import Trust
    from peftkit.run_dir import load_run as _load_run

    model, processor, config, _ = _load_run(run_dir, trust=Trust(trust_remote_code, skip_base_check))
    return model, processor, config
