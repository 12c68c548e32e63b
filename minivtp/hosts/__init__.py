"""Video LLM hosts beyond the LLaVA family, one file per vision tower or host family: each opens with its prompt
layout drawn as rows, holds its checkpoint names and its loader, and hands `weights.load_video_llm` a model with
the same `prompt` -> (embeds, VideoSpan) contract as minivtp.vision.VideoLLM."""
