"""The paper's rivals beside LLM-VTP: FastV, PruMerge+ and Look-M, a file each, each opening with where its paper and
its code differ and what minivtp does. LLM-VTP itself stays alone in vtp.py and generate.py, which know nothing of
these; a rival plugs in where the call site shows it:

    generate(model, embeds, 64, video=span, method=FastV(alpha=0.1, layer=2))   # its own prefill, at layer K
    generate(model, embeds, 64, video=span, method=LookM(recent=0.05, important=0.05))   # every layer's cache
    p = PruMergePlus().prompt(vm, ids, pixels)    # in the vision tower, before the LLM; then generate(video=None)

The same prompt as vtp.py, and where each method looks to decide what the video keeps:

    prompt rows   0 .. start-1     prefix         kept by all
                  start .. end-1   video          LLM-VTP:   every question row's attention at layer M, top per frame
                                                  FastV:     the LAST prompt row's attention at layer K, top over
                                                             the whole video; layers 1..K keep every row
                                                  PruMerge+: CLIP's [CLS] attention inside the vision tower, per
                                                             frame, before the LLM sees anything; merges the rest in
                                                  Look-M:    after a full prefill, the attention every row received
                                                             in each layer; keeps text first; merges the rest in
                  end .. N-1       question       kept by all (Look-M: text rows first, then recent rows)

A worked example with made-up scores: 2 frames of 4 tokens, keep 2 per frame (LLM-VTP) or 4 in all (FastV).

    >>> from minivtp import vtp
    >>> from minivtp.vtp import VideoSpan
    >>> video = VideoSpan(start=3, frames=2, tokens_per_frame=4)
    >>> question_rows = torch.tensor([.1, .9, .3, .2,   .5, .1, .1, .6])   # a_v, averaged over question rows
    >>> last_row = torch.tensor([.0, .8, .7, .6,   .5, .0, .0, .1])        # the last prompt row alone
    >>> vtp.select_per_frame(question_rows, video, 0.5).tolist()          # LLM-VTP
    [4, 5, 7, 10]
    >>> vtp.select_whole_sequence(last_row, video, 0.5).tolist()          # FastV: frame 2 nearly empties
    [4, 5, 6, 7]

Where a paper and its public code differ, or applying an image method to video needs a decision, here is what
minivtp does and why. Sources: FastV, Chen et al. 2024, pkunlp-icler/FastV (`fastv_forward` in its
modeling_llama.py); PruMerge+, Shang et al. 2024, 42Shawn/LLaVA-PruMerge (`token_prune_merge_advanced_plus` in
clip_encoder.py); Look-M, Wan et al. 2024, SUSTechBruce/LOOK-M (`TextAVGMergeKVCache_LayerWise` and
`PivotKVCache_LayerWise` in kv_token_merge/modify_llama.py).
"""

from minivtp.rivals.fastv import FastV
from minivtp.rivals.look_m import LookM
from minivtp.rivals.prumerge import PruMergePlus

RIVALS = {"fastv": FastV, "prumerge+": PruMergePlus, "look-m": LookM}  # the command line's --method names
