"""minivtp: LLM-VTP (visual token pruning for video LLMs), from scratch. Start with model.py, then vtp.py."""

import warnings

# torch warns "Failed to initialize NumPy" on import when numpy is not installed. minivtp never needs numpy
# (png.py writes without it), so on a fresh install that line is noise, the first thing a newcomer would see.
# This filter matches that one message and nothing else, and only when minivtp is imported before torch.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)
