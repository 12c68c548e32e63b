"""InstructBLIP-Video: a Q-Former video LLM, as transformers writes it (`InstructBlipVideoForConditionalGeneration`),
and the class that ST-LLM (stllm.py) reuses with its own vision tower and prompt.

The LLM's prompt, rows (T frames, Nq query tokens per frame; transformers' processor puts the video first):

    prompt rows   0 .. T*Nq-1        video: frame 0's Nq query tokens, frame 1's, ...   VideoSpan(0, T, Nq)
                  T*Nq .. N-1        <s> and the question: LLM-VTP's question rows

How a frame becomes its Nq rows (eva_vit.py, qformer.py):

    pixels (T, 3, 224, 224) --EVA ViT + norm--> (T, 1+P, Cv) --Q-Former, the question's BERT ids beside the
        queries--> (T, Nq, Cq) --projector (one Linear)--> (T, Nq, C) --frame by frame--> (T*Nq, C)

`ids` hold ONE placeholder, config.video_token_index, where the T*Nq rows go; transformers wants T*Nq copies
of it instead (`masked_scatter`), which is the only difference between the two prompts.

A worked example: 4 frames of Nq = 32, LLM-VTP at alpha = 0.1 keeps ceil(0.1 * 32) = 4 query tokens of each
frame, 16 of the 128 video rows; frame 2's candidates are rows 64 .. 95 and nothing else.

PruMerge+ does not apply: it keeps the patches that CLIP's [CLS] row attends to most. Here the LLM never sees
patches, only query tokens, and no query is a [CLS] (they are peers, made by the same layers from the same
frame); the tower's own [CLS] row feeds the Q-Former, whose output has no row for it.
"""

from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from minivtp import checkpoint
from minivtp.hf_config import config_from_hf
from minivtp.hosts import Host, Prompt, llava
from minivtp.hosts.eva_vit import EvaConfig, EvaViT
from minivtp.hosts.frames import sample_indices
from minivtp.hosts.llava import preprocess
from minivtp.hosts.prompts import ANSWER_PROMPT, POST_QUERY
from minivtp.hosts.qformer import QFormer, QFormerConfig, WordPiece
from minivtp.model import Config, Transformer
from minivtp.vtp import VideoSpan

PRUMERGE_ERROR = ("PruMerge+ cannot run on a Q-Former host: it ranks patches by the vision tower's [CLS] attention, "
                  "and what this LLM reads are the Q-Former's query tokens, none of which is a [CLS] (paper, Sec. 4.2 "
                  "and Tab. 8); use --method llm-vtp, fastv or look-m")


class QFormerVideoLLM(Host):
    """Vision tower + Q-Former + projector + minivtp's Transformer. `arrangement` names the host's prompt."""

    def __init__(self, text: Config, vision: nn.Module, qformer: QFormerConfig, image_token: int, frames: int = 4,
                 arrangement: str = "instructblip-video"):
        super().__init__()
        self.vision = vision
        self.qformer = QFormer(qformer)
        self.projector = nn.Linear(qformer.dim, text.dim)  # transformers: language_projection; LAVIS: llm_proj
        self.llm = Transformer(text)
        self.image_token, self.frames, self.arrangement = image_token, frames, arrangement
        self.wordpiece = None  # the Q-Former's tokenizer, set by the loader when the directory has one
        self.max_txt_len = None  # the host's truncation of the instruction (None: the Q-Former's positions)

    @classmethod
    def from_hf(cls, hf: dict) -> "QFormerVideoLLM":
        """Built (on the current device, meta included) from an InstructBlipVideo `config.json`."""
        vision = EvaConfig.from_hf(hf.get("vision_config", {}))
        text = dict(hf.get("text_config", {}))
        if text.get("model_type", "llama") != "llama":
            raise ValueError(f"text_config.model_type {text['model_type']!r}: minivtp's decoder is LLaMA's "
                             "(InstructBLIP's Vicuna); FlanT5 hosts are encoder-decoders")
        text.setdefault("model_type", "llama")
        if hf.get("video_token_index") is None:
            raise ValueError("config.json has no video_token_index: the id of the video placeholder in the prompt")
        q = QFormerConfig.from_hf(hf.get("qformer_config", {}), n_query=hf.get("num_query_tokens", 32),
                                  vision_dim=vision.dim)
        return cls(config_from_hf(text), EvaViT(vision), q, image_token=hf["video_token_index"],
                   frames=hf.get("num_frames", 4))

    def tokens_per_frame(self) -> int:  # Nq
        return self.qformer.cfg.n_query

    def sample_indices(self, n_available: int, n: int):  # which frames of a video it reads (PLLaVA's way)
        return sample_indices(n_available, n)

    def preprocess(self, frames):  # frames (H, W, 3) uint8 each -> (T, 3, S, S), CLIP-normalised as the hosts do
        return preprocess(frames, self.vision.cfg.image_size)

    def qformer_ids(self, text: str, device=None) -> torch.Tensor:
        """The instruction as the Q-Former reads it: (1, Lq) BERT WordPiece ids, [CLS] ... [SEP]; longer than
        `max_txt_len` (ST-LLM 256, VideoChat2 512, both truncating on the left: st_llm.py:233, 344-350) or the
        Q-Former's positions, the first ids after [CLS] go, as their tokenizers drop them."""
        if self.wordpiece is None:
            raise ValueError("this model has no Q-Former tokenizer: put bert-base-uncased's vocab.txt in "
                             "qformer_tokenizer/ beside config.json")
        ids = self.wordpiece.encode(text)
        n = min(self.max_txt_len or len(ids), self.qformer.cfg.max_positions)
        if len(ids) > n:
            ids = ids[:1] + ids[len(ids) - n + 1 :]  # [CLS], then the last n - 1 ids ([SEP] among them)
        return torch.tensor([ids], device=device)

    def features(self, pixels):
        """pixels (T, 3, S, S) -> the vision rows the Q-Former reads, (T, 1+P, Cv)."""
        return self.vision(pixels)

    def video_tokens(self, pixels, qformer_ids=None):
        """pixels (T, 3, S, S) -> (T*Nq, C) video rows, frame by frame, and T."""
        image = self.features(pixels)  # (T, 1+P, Cv)
        q = self.qformer(image.to(self.qformer.query.dtype), qformer_ids)  # (T, Nq, Cq)
        return rearrange(self.projector(q), "t n c -> (t n) c"), pixels.shape[0]  # (T*Nq, C)

    def encode(self, tok, question: str, template: str = None):
        """(ids with ONE placeholder, {"qformer_ids": the instruction's BERT ids}): the host's own template, and
        the Q-Former reads the question too. template "eval_mvbench" asks for the host's MVBench prompt."""
        mvbench = template == "eval_mvbench"
        question = question.removesuffix(POST_QUERY)  # a benchmark's post-query: the MVBench template says its own
        ids = torch.tensor(self.prompt_ids(tok, question, mvbench))
        return ids, dict(qformer_ids=self.qformer_ids(self.qformer_text(question, mvbench)))

    def check_tokenizer(self, tok, where):
        pass  # the host splices its placeholder id itself: the tokenizer need not know it

    def prompt(self, ids: torch.Tensor, pixels, qformer_ids=None) -> Prompt:
        """Token ids (N0,) with ONE video placeholder -> Prompt(embeds (1, N, C), VideoSpan(start, T, Nq),
        positions (N,))."""
        if qformer_ids is not None:
            qformer_ids = qformer_ids.to(pixels.device)
        video, T = self.video_tokens(pixels, qformer_ids)
        embeds, start = self.splice(ids, video)  # Eq. 1
        span = VideoSpan(start, T, video.shape[0] // T)
        span.check(embeds.shape[1], video_rows=video.shape[0])
        return Prompt(embeds, span, torch.arange(embeds.shape[1], device=embeds.device))

    def class_attention(self, pixels):
        raise ValueError(PRUMERGE_ERROR)

    def prompt_ids(self, tok, question: str, mvbench: bool = False) -> list:
        """transformers' processor: the video first, then <s> and the text as it is. InstructBLIP has no MVBench
        template of its own: for `eval`, PLLaVA's post-query and answer prompt follow the question (our choice)."""
        return [self.image_token] + tok.encode(question + (POST_QUERY + "\n" + ANSWER_PROMPT if mvbench else ""))

    def qformer_text(self, question: str, mvbench: bool = False) -> str:
        return question  # ST-LLM's MVBench run too: "Question: ... Options: ..." (mv_bench.py:250)


# --------------------------------------------------------------------------------------------------------------
# transformers' names -> ours


def hf_to_ours(name: str):
    """An InstructBlipVideo tensor name -> our parameter name; "" for a derived buffer; None if unknown."""
    import re


    rules = [
        (r"vision_model\.embeddings\.class_embedding$", "vision.cls"),
        (r"vision_model\.embeddings\.position_embedding$", "vision.pos"),
        (r"vision_model\.embeddings\.patch_embedding\.", "vision.patch."),
        (r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.qkv\.", r"vision.layers.\1.attn.qkv."),
        (r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.projection\.", r"vision.layers.\1.attn.proj."),
        (r"vision_model\.encoder\.layers\.(\d+)\.layer_norm([12])\.", r"vision.layers.\1.norm\2."),
        (r"vision_model\.encoder\.layers\.(\d+)\.mlp\.(fc[12])\.", r"vision.layers.\1.\2."),
        (r"vision_model\.post_layernorm\.", "vision.norm."),
        (r"query_tokens$", "qformer.query"),
        (r"language_projection\.", "projector."),
    ] + [(p.replace("QF", r"qformer\."), r) for p, r in QFORMER_RULES]
    name = re.sub(r"^model\.(?=vision_model|qformer|query_tokens|language_projection|language_model)", "", name)
    ours = checkpoint.apply_rules(name, rules)
    if ours is not None:
        return ours + "_stored" if ours in SQUEEZE else ours  # loaded at their stored shape, then squeezed
    if name == "qformer.embeddings.position_ids":
        return ""
    return llava.llava_to_ours(name)  # language_model.* and lm_head.*, in every layout transformers wrote


# The Q-Former's names, transformers' ("attention.attention") and LAVIS's ("attention.self", ST-LLM) alike;
# QF stands for the prefix ("qformer." or "Qformer.bert.").
def lavis_block_rules(src: str, dst: str) -> list:
    r"""The key rules of one LAVIS-named ViT block (EVA in ST-LLM, UMT in VideoChat2, the BT-Adapter's spatial
    blocks): `src` the block's prefix as a pattern with one (\d+) group, `dst` ours with \1 for it."""
    return [(rf"{src}\.attn\.qkv\.weight$", rf"{dst}.attn.qkv.weight"),
            (rf"{src}\.attn\.([qv])_bias$", rf"{dst}.attn.\2_bias"),
            (rf"{src}\.attn\.proj\.", rf"{dst}.attn.proj."),
            (rf"{src}\.(norm[12])\.", rf"{dst}.\2."),
            (rf"{src}\.mlp\.(fc[12])\.", rf"{dst}.\2.")]


QFORMER_RULES = [
    (r"QFembeddings\.word_embeddings\.", "qformer.word."),
    (r"QFembeddings\.position_embeddings\.", "qformer.pos."),
    (r"QFembeddings\.(?:layernorm|LayerNorm)\.", "qformer.norm."),
    (r"QFencoder\.layer\.(\d+)\.attention\.(?:attention|self)\.(query|key|value)\.",
     lambda m: f"qformer.layers.{m[1]}.self_attn.{QKV[m[2]]}."),
    (r"QFencoder\.layer\.(\d+)\.attention\.output\.dense\.", r"qformer.layers.\1.self_attn.out."),
    (r"QFencoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"qformer.layers.\1.self_attn.norm."),
    (r"QFencoder\.layer\.(\d+)\.crossattention\.(?:attention|self)\.(query|key|value)\.",
     lambda m: f"qformer.layers.{m[1]}.cross_attn.{QKV[m[2]]}."),
    (r"QFencoder\.layer\.(\d+)\.crossattention\.output\.dense\.", r"qformer.layers.\1.cross_attn.out."),
    (r"QFencoder\.layer\.(\d+)\.crossattention\.output\.LayerNorm\.", r"qformer.layers.\1.cross_attn.norm."),
    (r"QFencoder\.layer\.(\d+)\.intermediate_query\.dense\.", r"qformer.layers.\1.ffn_query.fc1."),
    (r"QFencoder\.layer\.(\d+)\.output_query\.dense\.", r"qformer.layers.\1.ffn_query.fc2."),
    (r"QFencoder\.layer\.(\d+)\.output_query\.LayerNorm\.", r"qformer.layers.\1.ffn_query.norm."),
    (r"QFencoder\.layer\.(\d+)\.intermediate\.dense\.", r"qformer.layers.\1.ffn_text.fc1."),
    (r"QFencoder\.layer\.(\d+)\.output\.dense\.", r"qformer.layers.\1.ffn_text.fc2."),
    (r"QFencoder\.layer\.(\d+)\.output\.LayerNorm\.", r"qformer.layers.\1.ffn_text.norm."),
]
QKV = {"query": "wq", "key": "wk", "value": "wv"}


# Tensors whose stored shape differs from ours only by leading 1s: transformers keeps (1, Nq, Cq) queries,
# (1, 1, Cv) [CLS] and (1, 1+P, Cv) positions.
SQUEEZE = ("qformer.query", "vision.cls", "vision.pos")


def load(path, dtype=torch.float32, device="cpu", progress=None, lora_alpha=None) -> QFormerVideoLLM:
    """A directory transformers' InstructBlipVideoForConditionalGeneration.save_pretrained wrote -> QFormerVideoLLM.
    A `qformer_tokenizer/vocab.txt` beside it (the processor's save_pretrained) gives the Q-Former's tokenizer."""

    path, hf, files, index = checkpoint.open_checkpoint(path)
    checkpoint.no_lora(path, hf, lora_alpha)
    model = checkpoint.build_on_meta(path, lambda: QFormerVideoLLM.from_hf(hf), "an InstructBLIP-Video model")
    info = checkpoint.load_staged(model, files, hf_to_ours, dtype, device, index, progress, squeezed(model, SQUEEZE))
    if model.llm.cfg.tie_embeddings:
        model.llm.output.weight = model.llm.embed.weight
    if (Path(path) / "qformer_tokenizer" / "vocab.txt").is_file():
        model.wordpiece = WordPiece.from_dir(path)
    model.load_info = dict(info, files=[f.name for f in files], path=str(path), config=hf)
    return model.eval()


def squeezed(model, names) -> list:
    """checkpoint.load_staged's stages for tensors stored with leading 1s: (1, Nq, Cq) fills our (Nq, Cq), nothing else."""
    stages = []
    for name in names:
        shape = tuple(model.get_parameter(name).shape)
        stages.append(([name], {name + "_stored": (1,) * (3 - len(shape)) + shape},
                       lambda got, shape=shape: [next(iter(got.values())).reshape(shape)]))
    return stages
