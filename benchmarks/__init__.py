"""The peftkit benchmark suite: every strategy against full fine-tuning and the stock Trainer route."""
