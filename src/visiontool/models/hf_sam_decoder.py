"""The prompt encoder and mask decoder of transformers' SAM-family models, in numpy (no torch).

On an embedding-cache hit only these small heads run, so a new prompt on a known image needs
neither torch nor transformers (importing them alone takes seconds).

* SAM (``model_type`` sam): transformers' ``SamModel`` heads are segment-anything's, weight for
  weight; their arrays are renamed to segment-anything's names and served by
  :class:`~visiontool.models.sam_decoder.NumpySamDecoder` (the official adapter's decoder).
* SAM 2 / 2.1, EdgeTAM and SAM 3's tracker share one head (``Sam2PromptEncoder`` +
  ``Sam2MaskDecoder``: an object-score token, high-resolution skip features, a sigmoid IoU
  head and "dynamic multimask" — a single-mask answer whose stability is below 0.98 is
  replaced by the best of the three multimask answers): :class:`Sam2Decoder`.

Shapes: features ``(s0 (C/8, 4g, 4g), s1 (C/4, 2g, 2g), emb (C, g, g))`` as
``Sam2Model.get_image_embeddings`` returns them (``no_memory_embedding`` added); coordinates
in the model's input frame (``image_size`` pixels square, XY); boxes XYXY in that frame;
low-res mask logits ``(B, M, 4g, 4g)``.

Attention between the few prompt tokens (T ≈ 5-9) and the N = g² image positions is evaluated
by associativity where that is cheaper — ``(q Wk)(X + PE)^T`` and ``(A X) Wv^T`` instead of
projecting N keys and values per prompt, ``A (V Wo^T)`` instead of ``(A V) Wo^T`` — exact up to
float rounding (a per-row constant dropped before a softmax does not change it). The image
side of the first block is the same for every prompt and is projected once per image.
"""
from __future__ import annotations

import math

import numpy as np

from visiontool.models import sam_array_ops
from visiontool.models.sam_array_ops import ArrayOps, gelu, layer_norm, softmax

F32 = np.float32


def _conv2x2(x: np.ndarray, k: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Conv2d(kernel 2, stride 2) on channels-last (H, W, Ci) with weight (Co, Ci, 2, 2)."""
    hh, ww, ci = x.shape
    co = k.shape[0]
    p = x.reshape(hh // 2, 2, ww // 2, 2, ci).transpose(0, 2, 4, 1, 3).reshape(hh // 2, ww // 2, ci * 4)
    return p @ k.reshape(co, ci * 4).T + bias


# ----------------------------------------------------------------------------- SAM 1
def official_sam_arrays(w: dict, image_size: int, grid: int) -> dict:
    """transformers ``SamModel`` prompt-encoder / mask-decoder arrays under segment-anything's
    names (what :class:`~visiontool.models.sam_decoder.NumpySamDecoder` reads)."""
    out = {"__img_size__": np.array(image_size), "__embed_grid__": np.array(grid),
           "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix":
               w["shared_image_embedding.positional_embedding"]}
    pe_map = {"mask_embed.conv1": "mask_downscaling.0", "mask_embed.layer_norm1": "mask_downscaling.1",
              "mask_embed.conv2": "mask_downscaling.3", "mask_embed.layer_norm2": "mask_downscaling.4",
              "mask_embed.conv3": "mask_downscaling.6"}
    for k, v in w.items():
        if k.startswith("prompt_encoder."):
            rest = k[len("prompt_encoder."):]
            for a, b in pe_map.items():
                if rest.startswith(a + "."):
                    rest = b + rest[len(a):]
            if rest.startswith("point_embed."):
                rest = "point_embeddings." + rest[len("point_embed."):]
            out["prompt_encoder." + rest] = v
        elif k.startswith("mask_decoder."):
            out[_official_decoder_name(k, w)] = v
    return out


def _official_decoder_name(k: str, w: dict) -> str:
    import re

    k = k.replace("upscale_conv1", "output_upscaling.0").replace("upscale_layer_norm", "output_upscaling.1")
    k = k.replace("upscale_conv2", "output_upscaling.3").replace("layer_norm_final_attn", "norm_final_attn")
    k = re.sub(r"(transformer\.layers\.\d+)\.layer_norm(\d)", r"\1.norm\2", k)
    m = re.match(r"(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))"
                 r"\.(proj_in|proj_out|layers\.(\d+))\.(.*)", k)
    if m:
        head, part, mid, tail = m.groups()
        n_mid = len({x.split(".")[-2] for x in w if x.startswith(head + ".layers.")})
        idx = 0 if part == "proj_in" else n_mid + 1 if part == "proj_out" else int(mid) + 1
        k = f"{head}.layers.{idx}.{tail}"
    return k


def sam1_decoder(w: dict, image_size: int, grid: int, num_heads: int):
    from visiontool.models.sam_decoder import NumpySamDecoder

    dec = NumpySamDecoder(official_sam_arrays(w, image_size, grid))
    dec.num_heads = num_heads  # segment-anything's is always 8; transformers' config says
    return dec


# ----------------------------------------------------------------------------- SAM 2 family
class Sam2Decoder:
    """``Sam2PromptEncoder`` + ``Sam2MaskDecoder`` (SAM 2/2.1, EdgeTAM, SAM 3 tracker) in numpy."""

    def __init__(self, w: dict, image_size: int, grid: int, num_heads: int = 8, dynamic: bool = True,
                 delta: float = 0.05, thresh: float = 0.98, ln_eps: float = 1e-6):
        self.w = {k: np.ascontiguousarray(v, dtype=F32) for k, v in w.items()}
        self.img_size = int(image_size)
        self.grid = int(grid)
        self.h = int(num_heads)
        self.dynamic, self.delta, self.thresh = bool(dynamic), float(delta), float(thresh)
        self.ln_eps = float(ln_eps)
        self.dim = int(self.w["prompt_encoder.no_mask_embed.weight"].shape[1])
        self.n_mask_tokens = int(self.w["mask_decoder.mask_tokens.weight"].shape[0])
        self.depth = len({k.split(".")[3] for k in self.w if k.startswith("mask_decoder.transformer.layers.")})
        self._dense_pe: np.ndarray | None = None
        self._cache: dict = {}

    # --------------------------------------------------------------- prompt encoder
    def _pe(self, coords01: np.ndarray, key: str) -> np.ndarray:
        g = self.w[key]
        c = (F32(2.0) * coords01.astype(F32) - F32(1.0)) @ g
        c *= F32(2 * np.pi)
        return np.concatenate([np.sin(c), np.cos(c)], axis=-1)

    def dense_pe(self) -> np.ndarray:
        """(g*g, C) positional encoding of the embedding grid, row-major (y, x)."""
        if self._dense_pe is None:
            g = self.grid
            ax = (np.arange(g, dtype=F32) + F32(0.5)) / F32(g)
            xs, ys = np.meshgrid(ax, ax)
            pe = self._pe(np.stack([xs, ys], -1), "shared_image_embedding.positional_embedding")
            self._dense_pe = np.ascontiguousarray(pe.reshape(g * g, self.dim))
        return self._dense_pe

    def sparse_embeddings(self, points: np.ndarray | None, labels: np.ndarray | None,
                          boxes: np.ndarray | None, batch: int = 1) -> np.ndarray:
        """points (B, P, 2) XY and labels (B, P) (1 fg, 0 bg); boxes (B, 4) XYXY; model frame.
        Returns (B, T, C): points (padded with a not-a-point when there is no box), then the
        box corners and a not-a-point — ``Sam2PromptEncoder`` exactly."""
        w, s = self.w, F32(self.img_size)
        key = "prompt_encoder.shared_embedding.positional_embedding"
        nap = w["prompt_encoder.not_a_point_embed.weight"][0]
        pe_w = w["prompt_encoder.point_embed.weight"]
        if points is None and boxes is None:  # Sam2Model pads a lone not-a-point (e.g. a mask prompt)
            points = np.zeros((batch, 1, 2), F32)
            labels = -np.ones((batch, 1), np.int64)
        parts = []
        if points is not None:
            pts = points.astype(F32) + F32(0.5)
            lab = labels.astype(np.int64)
            if boxes is None:
                pts = np.concatenate([pts, np.zeros((pts.shape[0], 1, 2), F32)], 1)
                lab = np.concatenate([lab, -np.ones((lab.shape[0], 1), np.int64)], 1)
            emb = self._pe(pts / s, key)
            emb[lab == -1] = nap
            emb[lab == -10] = 0.0
            pos = lab >= 0
            emb[pos] += pe_w[lab[pos]]
            parts.append(emb)
        if boxes is not None:
            corners = (boxes.astype(F32) + F32(0.5)).reshape(-1, 2, 2)
            emb = self._pe(corners / s, key)
            emb[:, 0] += pe_w[2]
            emb[:, 1] += pe_w[3]
            parts.append(np.concatenate([emb, np.broadcast_to(nap, (emb.shape[0], 1, self.dim))], 1))
        return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=F32)

    def dense_embedding(self, mask_logits: np.ndarray | None) -> np.ndarray:
        """No mask -> the (C,) no-mask embedding; (4g, 4g) logits -> (g*g, C)."""
        w = self.w
        if mask_logits is None:
            return w["prompt_encoder.no_mask_embed.weight"][0]
        x = mask_logits.astype(F32)[:, :, None]
        for i in (1, 2):
            p = f"prompt_encoder.mask_embed.conv{i}"
            x = _conv2x2(x, w[p + ".weight"], w[p + ".bias"])
            ln = f"prompt_encoder.mask_embed.layer_norm{i}"
            x = gelu(layer_norm(x, w[ln + ".weight"], w[ln + ".bias"], self.ln_eps))
        k = w["prompt_encoder.mask_embed.conv3.weight"]
        x = x @ k.reshape(k.shape[0], -1).T + w["prompt_encoder.mask_embed.conv3.bias"]
        return np.ascontiguousarray(x.reshape(-1, self.dim), dtype=F32)

    # --------------------------------------------------------------- pieces (on numpy or torch: ``o``)
    def _ln(self, o, x, name: str, eps: float = 1e-5):
        return o.ln(x, o.w(name + ".weight"), o.w(name + ".bias"), eps)

    def _ffn(self, o, x, prefix: str, sigmoid: bool = False):
        """``Sam2FeedForward`` (ReLU between layers)."""
        x = o.relu(o.lin(x, prefix + "proj_in"))
        i = 0
        while prefix + f"layers.{i}.weight" in self.w:
            x = o.relu(o.lin(x, prefix + f"layers.{i}"))
            i += 1
        x = o.lin(x, prefix + "proj_out")
        return o.sigmoid(x) if sigmoid else x

    def _token_attention(self, o, name: str, q, k, v):
        h = self.h
        qq, kk, vv = (o.heads(o.lin(x, f"{name}.{p}_proj"), h) for x, p in ((q, "q"), (k, "k"), (v, "v")))
        a = o.softmax(o.mm(qq, o.perm(kk, (0, 1, 3, 2))) * F32(1.0 / math.sqrt(qq.shape[-1])))
        out = o.perm(o.mm(a, vv), (0, 2, 1, 3)).reshape(q.shape[0], q.shape[1], -1)
        return o.lin(out, f"{name}.o_proj")

    def _tokens_to_image(self, o, name: str, q, keys, kp, shared: bool):
        """Tokens (B, T, C) attend to image keys ((N, C) shared or (B, N, C)) -> (B, T, C)."""
        h = self.h
        b, t, _ = q.shape
        qh = o.heads(o.lin(q, f"{name}.q_proj"), h)  # (B, h, T, d)
        d = qh.shape[-1]
        scale = F32(1.0 / math.sqrt(d))
        if shared:
            ck = ("kv", name)
            if ck not in self._cache:
                kk = o.perm(o.lin(kp, f"{name}.k_proj").reshape(-1, h, d), (1, 2, 0))  # (h, d, N)
                vv = o.perm(o.lin(keys, f"{name}.v_proj").reshape(-1, h, d), (1, 0, 2))  # (h, N, d)
                self._cache[ck] = (o.c(kk), o.c(vv))
            kt, vv = self._cache[ck]
            a = o.softmax(o.mm(qh, kt[None]) * scale)  # (B, h, T, N)
            out = o.mm(a, vv[None])  # (B, h, T, d)
        else:  # scores = (q Wk_h)(X + PE)^T (q.bk is constant along the softmax axis)
            qk = o.einsum("bhtd,hdc->bhtc", qh, o.wr(f"{name}.k_proj.weight", (h, d, -1))).reshape(b, h * t, -1)
            a = o.softmax(o.mm(qk * scale, o.perm(kp, (0, 2, 1))))  # (B, hT, N)
            ax = o.mm(a, keys).reshape(b, h, t, -1)  # rows of A sum to 1: A(X Wv + bv) = (AX) Wv + bv
            out = o.einsum("bhtc,hdc->bhtd", ax, o.wr(f"{name}.v_proj.weight", (h, d, -1))) + \
                o.wr(f"{name}.v_proj.bias", (h, 1, d))
        return o.lin(o.perm(out, (0, 2, 1, 3)).reshape(b, t, -1), f"{name}.o_proj")

    def _image_to_tokens(self, o, name: str, kp, k_tok, v_tok, shared: bool):
        """Image positions (kp: (N, C) shared or (B, N, C)) attend to the tokens; returns the
        (B, N, C) update of the keys (output projection and bias included)."""
        h = self.h
        b, t, _ = k_tok.shape
        kh = o.heads(o.lin(k_tok, f"{name}.k_proj"), h)  # (B, h, T, d)
        vh = o.heads(o.lin(v_tok, f"{name}.v_proj"), h)
        d = kh.shape[-1]
        scale = F32(1.0 / math.sqrt(d))
        if shared:
            ck = ("q", name)
            if ck not in self._cache:
                self._cache[ck] = o.c(o.perm(o.lin(kp, f"{name}.q_proj").reshape(-1, h, d), (1, 0, 2)))
            s = o.einsum("hnd,bhtd->bnht", self._cache[ck], kh) * scale  # (B, N, h, T)
        else:  # scores = X (Wq_h^T k) + bq_h . k
            m = o.einsum("hdc,bhtd->bcht", o.wr(f"{name}.q_proj.weight", (h, d, -1)), kh).reshape(b, -1, h * t)
            c = o.einsum("hd,bhtd->bht", o.wr(f"{name}.q_proj.bias", (h, d)), kh).reshape(b, 1, h * t)
            s = ((o.mm(kp, m) + c) * scale).reshape(b, -1, h, t)
        a = o.softmax(o.c(s)).reshape(b, -1, h * t)  # (B, N, hT)
        # A (V Wo^T): fold the output projection into the T value vectors of each head
        vw = o.einsum("bhtd,hdc->bhtc", vh, o.wr_t(f"{name}.o_proj.weight", (h, d, -1))).reshape(b, h * t, -1)
        return o.mm(a, vw) + o.w(f"{name}.o_proj.bias")

    # --------------------------------------------------------------- mask decoder
    def decode(self, feats, tokens: np.ndarray, dense: np.ndarray, multimask: bool, chunk: int = 8):
        """feats (s0, s1, emb); tokens (B, T, C); dense (C,) or (g*g, C), the same for all B.

        Returns low-res logits (B, M, 4g, 4g), predicted IoU (B, M) and object-score logits
        (B,): M = 3 with ``multimask``, else 1 (dynamic multimask applied as transformers does).
        Runs on torch's kernels when this process has already imported torch (multi-threaded
        elementwise work), else on numpy; the arithmetic is the same."""
        o = _Ops.get(self)
        s0, s1, emb = feats
        x0 = o.arr(np.ascontiguousarray(emb.reshape(self.dim, -1).T + dense, dtype=F32))  # (N, C)
        self._cache = {}
        masks, ious, objs = [], [], []
        for i in range(0, tokens.shape[0], chunk):
            m, q, ob = self._decode_chunk(o, x0, s0, s1, o.arr(np.ascontiguousarray(tokens[i:i + chunk], F32)),
                                          multimask)
            masks.append(m)
            ious.append(q)
            objs.append(ob)
        self._cache = {}
        return np.concatenate(masks), np.concatenate(ious), np.concatenate(objs)

    def _decode_chunk(self, o, x0, s0, s1, tokens, multimask: bool):
        pfx = "mask_decoder."
        b = tokens.shape[0]
        out_tok = o.cat([o.w(pfx + "obj_score_token.weight"), o.w(pfx + "iou_token.weight"),
                         o.w(pfx + "mask_tokens.weight")], 0)
        tok = o.cat([o.bcast(out_tok[None], (b,) + tuple(out_tok.shape)), tokens], 1)
        pe = o.const("dense_pe", self.dense_pe)
        if ("kp0",) not in self._cache:
            self._cache[("kp0",)] = x0 + pe
        queries, keys, kp, shared = tok, x0, self._cache[("kp0",)], True
        for i in range(self.depth):
            L = f"{pfx}transformer.layers.{i}."
            if i == 0:  # skip_first_layer_pe
                queries = self._token_attention(o, L + "self_attn", queries, queries, queries)
            else:
                qp = queries + tok
                queries = queries + self._token_attention(o, L + "self_attn", qp, qp, queries)
            queries = self._ln(o, queries, L + "layer_norm1")
            queries = queries + self._tokens_to_image(o, L + "cross_attn_token_to_image", queries + tok, keys, kp,
                                                      shared)
            queries = self._ln(o, queries, L + "layer_norm2")
            queries = queries + self._ffn(o, queries, L + "mlp.")
            queries = self._ln(o, queries, L + "layer_norm3")
            upd = self._image_to_tokens(o, L + "cross_attn_image_to_token", kp, queries + tok, queries, shared)
            upd += keys
            keys = self._ln(o, upd, L + "layer_norm4")  # (B, N, C) from here on
            kp = keys + pe
            shared = False
        T_ = pfx + "transformer."
        queries = queries + self._tokens_to_image(o, T_ + "final_attn_token_to_image", queries + tok, keys, kp,
                                                  shared)
        queries = self._ln(o, queries, T_ + "layer_norm_final_attn")

        # upscaling in sub-pixel order: (B, N, 2x2, C/4) then (B, N, 2x2, 2x2, C/8)
        g, w = self.grid, self.w
        k1 = w[pfx + "upscale_conv1.weight"]  # (C, C1, 2, 2)
        c1 = k1.shape[1]
        k1m = o.const("k1", lambda: k1.transpose(0, 2, 3, 1).reshape(k1.shape[0], -1))
        s1a = self._cache.setdefault(("s1",), o.arr(np.ascontiguousarray(
            s1.reshape(c1, g, 2, g, 2).transpose(1, 3, 2, 4, 0).reshape(g * g, 4, c1) + w[pfx + "upscale_conv1.bias"])))
        u = o.mm(keys.reshape(-1, self.dim), k1m).reshape(b, g * g, 4, c1)
        u += s1a
        u = o.gelu(o.ln(u, o.w(pfx + "upscale_layer_norm.weight"), o.w(pfx + "upscale_layer_norm.bias"), 1e-6))
        k2 = w[pfx + "upscale_conv2.weight"]  # (C1, C2, 2, 2)
        c2 = k2.shape[1]
        k2m = o.const("k2", lambda: k2.transpose(0, 2, 3, 1).reshape(c1, -1))
        s0a = self._cache.setdefault(("s0",), o.arr(np.ascontiguousarray(
            s0.reshape(c2, g, 2, 2, g, 2, 2).transpose(1, 4, 2, 5, 3, 6, 0).reshape(g * g, 4, 4, c2)
            + w[pfx + "upscale_conv2.bias"])))
        u = o.mm(u.reshape(-1, c1), k2m).reshape(b, g * g, 4, 4, c2)
        u += s0a
        u = o.gelu(u)

        use_dynamic = not multimask and self.dynamic
        sel = list(range(1, self.n_mask_tokens)) if multimask else list(range(self.n_mask_tokens)) if use_dynamic \
            else [0]
        hyper = o.stack([self._ffn(o, queries[:, 2 + j], f"{pfx}output_hypernetworks_mlps.{j}.") for j in sel], 2)
        m = o.mm(u.reshape(b, g * g * 16, c2), hyper)  # (B, cells*16, M)
        # cells (y, x), sub-pixels (i, j) then (k, l): row 4y+2i+k, column 4x+2j+l
        m = o.c(o.perm(m.reshape(b, g, g, 2, 2, 2, 2, len(sel)), (0, 7, 1, 3, 5, 2, 4, 6)))
        m = o.np(m).reshape(b, len(sel), 4 * g, 4 * g)
        iou = o.np(self._ffn(o, queries[:, 1], pfx + "iou_prediction_head.", sigmoid=True))[:, sel]
        obj = o.np(self._ffn(o, queries[:, 0], pfx + "pred_obj_score_head."))[:, 0]
        if use_dynamic:
            m, iou = self._dynamic(m, iou)
        return m, iou, obj

    def _dynamic(self, m: np.ndarray, iou: np.ndarray):
        """``_dynamic_multimask_via_stability``: keep the single-mask answer if its stability
        is >= thresh, else the multimask answer with the best predicted IoU."""
        single, multi = m[:, 0], m[:, 1:]
        flat = single.reshape(single.shape[0], -1)
        area_i = (flat > self.delta).sum(-1).astype(F32)
        area_u = (flat > -self.delta).sum(-1).astype(F32)
        stab = np.where(area_u > 0, area_i / np.maximum(area_u, 1), F32(1.0))
        best = np.argmax(iou[:, 1:], -1)
        rows = np.arange(m.shape[0])
        stable = stab >= self.thresh
        out_m = np.where(stable[:, None, None], single, multi[rows, best])[:, None]
        out_q = np.where(stable, iou[:, 0], iou[:, 1:][rows, best])[:, None]
        return np.ascontiguousarray(out_m, dtype=F32), out_q.astype(F32)


class _Ops(ArrayOps):
    """The decoder's array operations on numpy, or on torch when this process has imported it
    (multi-threaded elementwise kernels; weights shared zero-copy). Never imports torch."""

    def __init__(self, dec: Sam2Decoder, torch_mod=None):
        self.dec = dec
        self.t = torch_mod
        self._w: dict = {}

    @staticmethod
    def get(dec: Sam2Decoder) -> "_Ops":
        torch_mod = sam_array_ops.loaded_torch()  # as the SAM decoder's: one switch for both
        key = "torch" if torch_mod is not None else "numpy"
        ops = dec.__dict__.setdefault("_ops", {})
        if key not in ops:
            ops[key] = _Ops(dec, torch_mod)
        return ops[key]

    # conversions and constants
    def const(self, key: str, make):
        if key not in self._w:
            v = make() if callable(make) else make
            self._w[key] = self.arr(np.ascontiguousarray(v, dtype=F32))
        return self._w[key]

    def w(self, name: str):
        return self.const("w:" + name, self.dec.w[name])

    def wr(self, name: str, shape):
        return self.const(f"wr:{name}:{shape}", lambda: self.dec.w[name].reshape(shape))

    def wr_t(self, name: str, shape):
        return self.const(f"wrt:{name}:{shape}", lambda: self.dec.w[name].T.reshape(shape))

    # operations
    def lin(self, x, name: str):
        wt = self.const("lin:" + name, lambda: self.dec.w[name + ".weight"].T)
        y = self.mm(x, wt)
        y += self.w(name + ".bias")
        return y

    def mm(self, a, b):
        return self.t.matmul(a, b) if self.t is not None else a @ b

    def einsum(self, spec, *xs):
        return self.t.einsum(spec, *xs) if self.t is not None else np.einsum(spec, *xs, optimize=True)

    def relu(self, x):
        return self.t.relu(x) if self.t is not None else np.maximum(x, 0)

    def sigmoid(self, x):
        return self.t.sigmoid(x) if self.t is not None else 1.0 / (1.0 + np.exp(-x))

    def softmax(self, x):
        return self.t.softmax(x, -1) if self.t is not None else softmax(x, -1)

    def gelu(self, x):
        return self.t.nn.functional.gelu(x) if self.t is not None else gelu(x)

    def ln(self, x, w, b, eps: float):
        if self.t is not None:
            return self.t.nn.functional.layer_norm(x, (x.shape[-1],), w, b, eps)
        return layer_norm(x, w, b, eps)
