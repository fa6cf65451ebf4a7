"""peftkit: parameter-efficient fine-tuning, orchestrated over transformers, peft and accelerate."""

__version__ = "0.1.0"


def load_run(run_dir):
    """Load a trained run directory: ``(model, processor, config)`` (the processor is the tokenizer for text
    tasks); see :mod:`peftkit.run_dir`."""
    from peftkit.console import quiet_known_noise

    quiet_known_noise()  # first: importing run_dir imports bitsandbytes, which warns as it loads on some CPUs
    from peftkit.run_dir import load_run as _load_run

    model, processor, config, _ = _load_run(run_dir)
    return model, processor, config
