"""Host video LLMs beyond the paper's PLLaVA and Tarsier (which live in minivtp/hosts/llava.py): one file per vision
tower or host family, each opening with its prompt layout drawn as rows and holding the loader names of its own
checkpoints; `weights.load_video_llm` dispatches to them by the config's model_type, and each hands back a model
with the same `prompt` -> (embeds, VideoSpan) contract as minivtp.hosts.llava.VideoLLM."""
