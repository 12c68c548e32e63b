"""python -m minivtp explore: one HTML page to play with LLM-VTP's choice, every layer, alpha and M as sliders.

    python -m minivtp explore --out explore.html          # the shipped toy, a held-out question: seconds on a CPU
    python -m minivtp explore --weights pllava-7b --video clip.mp4 --question "What is he doing?" \\
        --device cuda --dtype bfloat16 --out explore.html

One unpruned prefill keeps, at every layer, the question rows' attention to every video token (Eq. 4 averaged
over the question rows, under each head pooling) and the last row's (FastV's rule). The page holds those scores,
the frames as PNGs and a little JavaScript: moving a slider recomputes the kept set in the page, top
ceil(alpha * Nv) of every frame (Eq. 5-6) or of the whole video, the KV rows it leaves and the prefill FLOPs
(the formula of `minivtp.flops`). For the toy the page also holds the answer the model gives at every slider
position, computed here, so you can see where pruning starts to break it. Plain HTML: no server, no network,
opens from disk. `#M=2&alpha=0.3&pool=mean&ranking=sequence&rule=fastv` at the end of its address sets the
controls.

The "compare" control lays the kept set of the authors' released code (vtp.VARIANTS: scores before RoPE, no causal
mask, max over heads and question rows, int(alpha * Nv) a frame, which is 0 below alpha = 1/Nv) over the paper's,
outlined in another colour, with how many tokens both keep (tutorial chapter 12).
"""

import argparse
import base64
import json
import sys
from pathlib import Path

import torch

from minivtp import vtp
from minivtp.generate import Method
from minivtp.lab import png, toy
from minivtp.rivals import FastV

ALPHAS = [round(0.05 * i, 2) for i in range(1, 21)]  # the alpha slider: 0.05 .. 1.0
POOLS = ("max", "mean", "min")


@torch.no_grad()
def layer_scores(llm, embeds, video):
    """One unpruned prefill: {"max" | "mean" | "min": per layer a_v (T*Nv,) from the question rows, pooled over
    heads that way (Eq. 4, then the mean over question rows); "last": per layer the last row's attention, the
    mean over heads (FastV's score); "released": per layer the released code's a_v (q, k before RoPE, no mask,
    max over heads, then over the question rows)}."""
    N = embeds.shape[1]
    pos = torch.arange(N, device=embeds.device)
    cos, sin = llm.rope(pos)
    caches = llm.new_caches(1, N)
    questions = torch.arange(video.end, N, device=embeds.device)
    out = {name: [] for name in POOLS + ("last", "released")}
    x = embeds.to(llm.embed.weight.dtype)
    for l, (block, cache) in enumerate(zip(llm.layers, caches)):
        x_in, x = x, llm.forward_layers(x, cos, sin, pos, caches, start=l, stop=l + 1)  # layer l+1, its input kept
        A = vtp.layer_attention(block, x_in, cos, sin, pos, cache, questions)  # (H, Nq, N)
        for pool in POOLS:
            # Eq. 4's column slice (the rows are already the question's), then the mean over question rows
            out[pool].append(vtp.video_scores(vtp.pool_heads(A, pool)[:, video.start : video.end]))
        out["last"].append(A[:, -1].mean(dim=0)[video.start : video.end])  # the last prompt row is the last question row
        rule = vtp.VARIANTS["released"]
        R = vtp.layer_attention(block, x_in, cos, sin, pos, cache, questions, rule["rope"], rule["causal"])
        # (H, Nq, N) -> heads by a max -> the video's columns -> question rows by a max: (T*Nv,)
        out["released"].append(vtp.video_scores(vtp.pool_heads(R, "max")[:, video.start : video.end], "max"))
    return {name: torch.stack(rows).float().cpu() for name, rows in out.items()}  # (L, T*Nv) each


def toy_page(model, seed: int):
    """Everything the page needs for the toy: a held-out question, its frames, scores and precomputed answers."""
    sample = toy.make_sample(torch.Generator().manual_seed(seed))
    embeds, video = model.prompt(sample.features[None], [sample.question])
    scores = layer_scores(model.llm, embeds, video)
    full, _ = toy.ask(model, sample)
    answers, L = {}, model.llm.cfg.n_layers
    for M in range(1, L + 1):
        for a in ALPHAS:
            for pool in POOLS:
                for ranking in ("frame", "sequence"):
                    words, _ = toy.ask(model, sample, method=Method(alpha=a, layer=M, head_pool=pool, ranking=ranking))
                    answers[f"llm-vtp|{M}|{a}|{pool}|{ranking}"] = " ".join(words)
            words, _ = toy.ask(model, sample, method=FastV(alpha=a, layer=M))
            answers[f"fastv|{M}|{a}"] = " ".join(words)
            words, _ = toy.ask(model, sample, method=Method(alpha=a, layer=M, variant="released"))
            answers[f"released|{M}|{a}"] = " ".join(words)
    right = {text: toy.is_right(sample, text.split()) for text in set(answers.values()) | {" ".join(full)}}
    frames = [toy_frame(sample, t) for t in range(toy.T)]
    objects = "; ".join(f"{o.colour} {o.shape} in frame {o.frame}" for o in sorted(sample.objects, key=lambda o: o.frame))
    return dict(title=f"minivtp toy, held-out video {seed}", question=" ".join(sample.question), video_note=objects,
                full_answer=" ".join(full), answers=answers, right=right, frames=frames,
                grid=[toy.ROWS, toy.COLS], cells=[[j // toy.COLS, j % toy.COLS] for j in range(toy.NV)],
                T=toy.T, Nv=toy.NV, prefix=video.start, Nq=embeds.shape[1] - video.end,
                scores={k: v.tolist() for k, v in scores.items()}, cfg=flops_cfg(model.llm.cfg))


def toy_frame(sample, t: int, cell: int = 40) -> str:
    img = png.canvas(toy.ROWS * cell, toy.COLS * cell, png.DARK)
    for o in sample.objects:
        if o.frame == t:
            png.draw_shape(img, o.row * cell, o.col * cell, cell, o.shape, png.PALETTE[o.colour])
    return base64.b64encode(png.encode_png(img)).decode()


def flops_cfg(cfg) -> dict:
    return dict(C=cfg.dim, F=cfg.hidden_dim, H=cfg.n_heads, Hkv=cfg.n_kv_heads, D=cfg.head_dim, V=cfg.vocab_size,
                L=cfg.n_layers)


def checkpoint_page(args):
    """The page for a PLLaVA / Tarsier / LLaVA directory: the scores of the user's question, no answers."""
    import torch.nn.functional as F

    import weights
    from minivtp.evaluation.pipeline import Pipeline

    hf = weights.read_config(Path(args.weights)) if Path(args.weights).is_dir() else {}
    if hf.get("model_type") in weights.QFORMER_HOSTS:
        raise ValueError(f"{args.weights}: the explorer draws each video token on its frame's grid; a Q-Former host's "
                         "tokens are queries with no place in the frame (python -m minivtp answer runs it)")
    pipe = Pipeline.load(args.weights, args.dtype, args.device, progress=False)
    frames, _ = pipe.read(args.video)
    embeds, video, _ = pipe.prompt(frames, args.question)
    scores = layer_scores(pipe.vm.llm, embeds, video)
    T, Nv = video.frames, video.tokens_per_frame
    found = pipe.vm.cells(Nv)
    if found is None:
        raise ValueError(f"{args.weights}: this host's video tokens have no place on the frame's grid")
    cells, grid = [None if c is None else list(c) for c in found[0]], list(found[1])
    pick = torch.linspace(0, len(frames) - 1, T).round().long().tolist()  # pooled frames: the first of each group
    images = []
    for i in pick:
        f = F.interpolate(frames[i].permute(2, 0, 1)[None].float(), size=(168, 168), mode="bilinear",
                          antialias=True, align_corners=False)[0].permute(1, 2, 0).clamp(0, 255).to(torch.uint8)
        images.append(base64.b64encode(png.encode_png(f.contiguous())).decode())
    return dict(title=f"{Path(args.weights).name}: {Path(args.video).name}", question=args.question, video_note="",
                full_answer=None, answers={}, right={}, frames=images, grid=grid, cells=cells, T=T, Nv=Nv,
                prefix=video.start, Nq=embeds.shape[1] - video.end, scores={k: v.tolist() for k, v in scores.items()},
                cfg=flops_cfg(pipe.vm.llm.cfg))


def render(data: dict) -> str:
    """The page: HTML, CSS and JavaScript in one string, the data embedded as JSON."""
    blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")  # never closes the script tag early
    return PAGE.replace("/*LOGIC*/", LOGIC).replace("/*DATA*/", blob).replace("/*ALPHAS*/", json.dumps(ALPHAS))


# The page's arithmetic, plain functions with no DOM, so tests run them under node against minivtp's Python.
LOGIC = r"""
function nKeep(alpha, n, count) {  // ceil(alpha * n), at least 1, as vtp.n_keep: rounded to 9 decimals first
  if (count === "floor") return Math.floor(n * alpha);  // the released code's int(n * alpha), maybe 0
  return Math.max(1, Math.ceil(Math.round(alpha * n * 1e9) / 1e9));
}
function topK(values, k) {  // indices of the k largest, ties to the lower index; sorted ascending
  const order = values.map((v, i) => i).sort((a, b) => values[b] - values[a] || a - b);
  return order.slice(0, k).sort((a, b) => a - b);
}
function selectPerFrame(scores, T, Nv, alpha, count) {  // Eq. 5-6, video-relative indices
  const k = nKeep(alpha, Nv, count), kept = [];
  for (let t = 0; t < T; t++) for (const j of topK(scores.slice(t * Nv, (t + 1) * Nv), k)) kept.push(t * Nv + j);
  return kept;
}
function selectWholeSequence(scores, alpha) {
  return topK(scores, nKeep(alpha, scores.length));
}
function layerFlops(c, n) {
  return 2 * n * c.C * (c.H * c.D + 2 * c.Hkv * c.D) + 2 * n * (c.H * c.D) * c.C + 3 * 2 * n * c.C * c.F
       + 2 * n * n * c.H * c.D * 2;
}
function prefillFlops(c, prefix, T, Nv, Nq, kept, layer, rule) {  // as minivtp.flops.prefill_flops
  const N = prefix + T * Nv + Nq, after = prefix + kept + Nq, head = 2 * c.C * c.V;
  const rows = rule === "fastv" ? 1 : Nq;
  const scoring = 2 * rows * c.C * c.H * c.D + 2 * rows * N * c.H * c.D;
  return {full: c.L * layerFlops(c, N) + head,
          pruned: layer * layerFlops(c, N) + (c.L - layer) * layerFlops(c, after) + scoring + head};
}
function keptSet(data, s) {  // s: {rule, M, alpha, pool, ranking}
  if (s.rule === "fastv") return selectWholeSequence(data.scores.last[s.M - 1], s.alpha);
  if (s.rule === "released") return selectPerFrame(data.scores.released[s.M - 1], data.T, data.Nv, s.alpha, "floor");
  const a = data.scores[s.pool][s.M - 1];
  return s.ranking === "frame" ? selectPerFrame(a, data.T, data.Nv, s.alpha) : selectWholeSequence(a, s.alpha);
}
if (typeof module !== "undefined") module.exports = {nKeep, topK, selectPerFrame, selectWholeSequence, prefillFlops, keptSet};
"""

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>minivtp explorer</title>
<style>
 body { font: 14px/1.4 system-ui, sans-serif; margin: 18px; color: #222; max-width: 1200px; }
 h1 { font-size: 18px; margin: 0 0 4px; } .note { color: #666; }
 .controls { display: grid; grid-template-columns: 170px 1fr 70px; gap: 6px 10px; align-items: center; margin: 14px 0;
             max-width: 640px; }
 .frames { display: flex; flex-wrap: wrap; gap: 8px; }
 .frame { text-align: center; font-size: 12px; color: #666; }
 canvas { display: block; border: 1px solid #ccc; }
 .stats { margin: 14px 0; display: grid; grid-template-columns: 220px 1fr; gap: 4px 12px; max-width: 760px; }
 .right { color: #187a2f; font-weight: 600; } .wrong { color: #b3261e; font-weight: 600; }
 .legend span { display: inline-block; width: 12px; height: 12px; vertical-align: middle; margin: 0 4px 0 12px; }
</style></head>
<body>
<h1 id="title"></h1>
<div class="note" id="videonote"></div>
<div>question: <b id="question"></b></div>
<div class="controls">
 <label for="rule">scoring rule</label>
 <select id="rule"><option value="llm-vtp">LLM-VTP: question rows</option><option value="fastv">FastV: last row</option></select><span></span>
 <label for="M">layer M</label><input id="M" type="range" min="1" step="1"><span id="Mval"></span>
 <label for="alpha">alpha (kept fraction)</label><input id="alpha" type="range" min="0" step="1"><span id="alphaval"></span>
 <label for="pool">head pooling</label>
 <select id="pool"><option>max</option><option>mean</option><option>min</option></select><span></span>
 <label for="ranking">ranking</label>
 <select id="ranking"><option value="frame">per frame (Eq. 5)</option><option value="sequence">whole video (Tab. 5)</option></select><span></span>
 <label for="compare">compare with</label>
 <select id="compare"><option value="off">nothing</option><option value="released">the authors' released code</option></select><span></span>
</div>
<div class="legend">attention at layer M: dark = low, bright = high; outlined<span style="background:#3ce65a"></span>kept<span id="releasedkey" style="background:#e040fb"></span><em id="releasedkeytext" style="font-style: normal">kept by the released code</em></div>
<div class="frames" id="frames"></div>
<div class="stats">
 <div>video tokens kept</div><div id="kept"></div>
 <div>KV cache rows after prefill</div><div id="kv"></div>
 <div>prefill FLOPs</div><div id="flops"></div>
 <div id="answerlabel">answer at this setting</div><div id="answer"></div>
 <div>answer with all tokens</div><div id="full"></div>
 <div id="releasedlabel">released code keeps</div><div id="released"></div>
 <div id="releasedanswerlabel">its answer</div><div id="releasedanswer"></div>
</div>
<div class="note">The kept set is recomputed here from the scores of one unpruned prefill: LLM-VTP takes the top
ceil(alpha Nv) of each frame (or of the whole video), FastV the top ceil(alpha T Nv) of the last row's
attention, averaged over heads. Answers were computed by the model at every setting beforehand (toy only). The
authors' released code scores with q and k before RoPE and no causal mask, takes the max over heads and then over the
question rows, and keeps int(alpha Nv) of each frame: below alpha = 1/Nv that is no token at all.</div>
<script id="logic">/*LOGIC*/</script>
<script>
const data = /*DATA*/;
const ALPHAS = /*ALPHAS*/;
const $ = id => document.getElementById(id);
const ui = {rule: $("rule"), M: $("M"), alpha: $("alpha"), pool: $("pool"), ranking: $("ranking"), compare: $("compare")};
ui.M.max = data.scores.max.length; ui.M.value = 1; ui.alpha.max = ALPHAS.length - 1; ui.alpha.value = 1;
$("title").textContent = data.title; $("question").textContent = data.question; $("videonote").textContent = data.video_note;
const CELL = 168, canvases = [], images = [];
data.frames.forEach((b64, t) => {
  const box = document.createElement("div"); box.className = "frame";
  const c = document.createElement("canvas"); c.width = CELL; c.height = CELL; box.appendChild(c);
  box.appendChild(document.createTextNode("frame " + t)); $("frames").appendChild(box); canvases.push(c);
  const img = new Image(); img.onload = () => update(); img.src = "data:image/png;base64," + b64; images.push(img);
});
function settings() {
  return {rule: ui.rule.value, M: +ui.M.value, alpha: ALPHAS[+ui.alpha.value], pool: ui.pool.value, ranking: ui.ranking.value,
          compare: ui.compare.value};
}
function heat(v) {  // the colour map of png.heat
  const stops = [[0,0,0],[150,20,30],[230,90,20],[250,210,60],[255,255,255]];
  v = Math.min(Math.max(v, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(v), stops.length - 2), f = v - i;
  return stops[i].map((a, k) => Math.round(a + (stops[i + 1][k] - a) * f));
}
function fmt(x) { return x >= 1e12 ? (x / 1e12).toFixed(2) + " T" : x >= 1e9 ? (x / 1e9).toFixed(2) + " G" : (x / 1e6).toFixed(2) + " M"; }
function update() {
  const s = settings(), fastv = s.rule === "fastv";
  ui.pool.disabled = ui.ranking.disabled = fastv;
  $("Mval").textContent = s.M; $("alphaval").textContent = s.alpha.toFixed(2);
  const scores = fastv ? data.scores.last[s.M - 1] : data.scores[s.pool][s.M - 1];
  const kept = new Set(keptSet(data, s)), top = Math.max(...scores) || 1, [R, C] = data.grid;
  const comparing = s.compare === "released";
  const other = new Set(comparing ? keptSet(data, {rule: "released", M: s.M, alpha: s.alpha}) : []);
  for (const id of ["releasedkey", "releasedkeytext", "releasedlabel", "released", "releasedanswerlabel", "releasedanswer"])
    $(id).style.display = comparing ? "" : "none";
  canvases.forEach((c, t) => {
    const g = c.getContext("2d"), w = CELL / C, h = CELL / R;
    g.clearRect(0, 0, CELL, CELL);
    if (images[t].complete) g.drawImage(images[t], 0, 0, CELL, CELL);
    for (let j = 0; j < data.Nv; j++) {
      const cell = data.cells[j]; if (!cell) continue;
      const v = scores[t * data.Nv + j] / top, [r, g2, b] = heat(v);
      g.fillStyle = `rgba(${r},${g2},${b},0.55)`; g.fillRect(cell[1] * w, cell[0] * h, w, h);
      if (kept.has(t * data.Nv + j)) { g.strokeStyle = "#3ce65a"; g.lineWidth = 2; g.strokeRect(cell[1] * w + 1, cell[0] * h + 1, w - 2, h - 2); }
      if (other.has(t * data.Nv + j)) { g.strokeStyle = "#e040fb"; g.lineWidth = 2; g.strokeRect(cell[1] * w + 5, cell[0] * h + 5, w - 10, h - 10); }
    }
  });
  const total = data.T * data.Nv, N = data.prefix + total + data.Nq, rows = data.prefix + kept.size + data.Nq;
  $("kept").textContent = `${kept.size} of ${total} (${(100 * kept.size / total).toFixed(1)}%)`;
  $("kv").textContent = fastv ? `${N} in layers 1..${s.M} (FastV keeps them), ${rows} in layers ${s.M + 1}..${data.cfg.L}`
                              : `${rows} of ${N} in every layer`;
  const f = prefillFlops(data.cfg, data.prefix, data.T, data.Nv, data.Nq, kept.size, s.M, s.rule);
  $("flops").textContent = `${fmt(f.full)} -> ${fmt(f.pruned)} (${(100 * (1 - f.pruned / f.full)).toFixed(0)}% saved)`;
  const key = fastv ? `fastv|${s.M}|${s.alpha}` : `llm-vtp|${s.M}|${s.alpha}|${s.pool}|${s.ranking}`;
  const answer = data.answers[key];
  const mark = a => a === undefined ? "" : `<span class="${data.right[a] ? "right" : "wrong"}">${a} (${data.right[a] ? "right" : "wrong"})</span>`;
  $("answer").innerHTML = answer === undefined ? "<span class=note>(precomputed for the toy only)</span>" : mark(answer);
  $("full").innerHTML = data.full_answer ? mark(data.full_answer) : "<span class=note>(not computed)</span>";
  const both = [...other].filter(i => kept.has(i)).length, perFrame = nKeep(s.alpha, data.Nv, "floor");
  $("released").textContent = `${other.size} of ${total} (${perFrame} a frame: int(${data.Nv} x ${s.alpha.toFixed(2)}))` +
    `; ${both} of them kept by both` + (perFrame === 0 ? "; no video token is left, as the released code runs it" : "");
  const theirs = data.answers[`released|${s.M}|${s.alpha}`];
  $("releasedanswer").innerHTML = theirs === undefined ? "<span class=note>(precomputed for the toy only)</span>" : mark(theirs);
}
for (const el of Object.values(ui)) el.addEventListener("input", update);
// #M=2&alpha=0.3&pool=mean&ranking=sequence&rule=fastv&compare=released sets the controls, through the same event a
// hand would send
for (const [k, v] of new URLSearchParams(location.hash.slice(1))) {
  if (!(k in ui)) continue;
  ui[k].value = k === "alpha" ? ALPHAS.findIndex(a => Math.abs(a - +v) < 1e-9) : v;
  ui[k].dispatchEvent(new Event("input"));
}
update();
</script>
</body></html>
"""


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minivtp explore", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("explore.html"))
    p.add_argument("--seed", type=int, default=2025, help="the toy's held-out video (without --weights)")
    p.add_argument("--weights", help="a PLLaVA / Tarsier / LLaVA directory (default: the shipped toy)")
    p.add_argument("--video", help="with --weights: video file, folder of images, or .safetensors frames")
    p.add_argument("--question", help="with --weights: the question")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32",
                   choices=("float32", "bfloat16", "float16"))
    args = p.parse_args(argv)
    try:
        if args.weights:
            if not (args.video and args.question):
                raise ValueError("--weights needs --video and --question")
            data = checkpoint_page(args)
        else:
            print(f"the toy, held-out video {args.seed}: one prefill, then answers at every slider position ...",
                  file=sys.stderr, flush=True)
            data = toy_page(toy.load(), args.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.write_text(render(data))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB): open it in a browser")
    return 0


if __name__ == "__main__":
    sys.exit(main())
