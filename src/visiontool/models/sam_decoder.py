"""SAM's prompt encoder and mask decoder in numpy: prompts -> low-res mask logits, no torch.

The same arithmetic as ``segment_anything.modeling.PromptEncoder`` / ``MaskDecoder`` (float32),
reorganised so that a batch of prompts on one image costs far less than
``SamPredictor.predict_torch``:

* the image side of the first two-way block (keys = image embedding + no-mask embedding)
  is the same for every prompt, so its projections are computed once per batch;
* attention between a few tokens (``T`` ≈ 5-8) and the 4096 image positions is evaluated by
  associativity — ``(q Wk) (X + PE)^T`` and ``(P X) Wv^T`` instead of projecting all 4096
  keys and values per prompt, ``A (V Wo^T)`` instead of ``(A V) Wo^T`` — which is exact up to
  float rounding (a per-row constant dropped before a softmax does not change it);
* nothing is repeated per prompt in memory (no ``repeat_interleave`` of the embedding).

Shapes: image embedding ``(C, g, g)`` (C=256, g=64), coordinates in the model's input
frame (longest side ``img_size`` = 1024 pixels, XY), boxes XYXY in that frame, low-res mask
logits ``(B, M, 4g, 4g)`` (256×256) covering the padded ``img_size`` square.
"""
from __future__ import annotations

import math

import numpy as np

from visiontool.models import sam_array_ops
from visiontool.models.sam_array_ops import ArrayOps, gelu, layer_norm, softmax


class NumpySamDecoder:
    """Prompt encoder + mask decoder from a dict of float32 arrays (state-dict keys)."""

    num_heads = 8  # SAM's TwoWayTransformer; not recoverable from shapes

    def __init__(self, w: dict[str, np.ndarray]):
        self.w = {k: np.ascontiguousarray(v, dtype=np.float32) if not k.startswith("__") else v
                  for k, v in w.items()}
        self.img_size = int(w["__img_size__"])
        self.grid = int(w["__embed_grid__"])
        self.dim = int(w["prompt_encoder.no_mask_embed.weight"].shape[1])
        self.n_mask_tokens = int(w["mask_decoder.mask_tokens.weight"].shape[0])
        self.depth = len({k.split(".")[3] for k in w if k.startswith("mask_decoder.transformer.layers.")})
        self.iou_depth = len({k.split(".")[3] for k in w
                              if k.startswith("mask_decoder.iou_prediction_head.layers.")})
        self._dense_pe: np.ndarray | None = None

    @property
    def embedding_shape(self) -> tuple[int, int, int]:
        """(C, g, g): the image embedding this decoder takes."""
        return (self.dim, self.grid, self.grid)

    # --------------------------------------------------------------- prompt encoder
    def _pe(self, coords01: np.ndarray) -> np.ndarray:
        g = self.w["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"]
        c = (2.0 * coords01.astype(np.float32) - 1.0) @ g
        c = np.float32(2 * np.pi) * c
        return np.concatenate([np.sin(c), np.cos(c)], axis=-1)

    def dense_pe(self) -> np.ndarray:
        """(g*g, C) positional encoding of the embedding grid, row-major (y, x)."""
        if self._dense_pe is None:
            g = self.grid
            ax = (np.arange(g, dtype=np.float32) + 0.5) / g
            xs, ys = np.meshgrid(ax, ax)
            self._dense_pe = np.ascontiguousarray(self._pe(np.stack([xs, ys], -1)).reshape(g * g, self.dim))
        return self._dense_pe

    def sparse_embeddings(self, points: np.ndarray | None, labels: np.ndarray | None,
                          boxes: np.ndarray | None, batch: int = 1) -> np.ndarray:
        """points (B, P, 2) XY and labels (B, P) in {1 fg, 0 bg}; boxes (B, 4) XYXY; model frame.

        Returns (B, T, C) tokens exactly as ``PromptEncoder``: points (padded with a
        not-a-point when there is no box), then the two box corners.
        """
        w, s = self.w, float(self.img_size)
        parts = []
        if points is not None:
            pts = points.astype(np.float32) + 0.5
            lab = labels.astype(np.int64)
            if boxes is None:
                pts = np.concatenate([pts, np.zeros((pts.shape[0], 1, 2), np.float32)], 1)
                lab = np.concatenate([lab, -np.ones((lab.shape[0], 1), np.int64)], 1)
            emb = self._pe(pts / s)
            emb[lab == -1] = 0.0
            emb[lab == -1] += w["prompt_encoder.not_a_point_embed.weight"][0]
            emb[lab == 0] += w["prompt_encoder.point_embeddings.0.weight"][0]
            emb[lab == 1] += w["prompt_encoder.point_embeddings.1.weight"][0]
            parts.append(emb)
        if boxes is not None:
            corners = (boxes.astype(np.float32) + 0.5).reshape(-1, 2, 2)
            emb = self._pe(corners / s)
            emb[:, 0] += w["prompt_encoder.point_embeddings.2.weight"][0]
            emb[:, 1] += w["prompt_encoder.point_embeddings.3.weight"][0]
            parts.append(emb)
        if not parts:  # a mask-only prompt: no sparse tokens at all, as PromptEncoder
            return np.zeros((batch, 0, self.dim), np.float32)
        return np.concatenate(parts, axis=1).astype(np.float32)

    def dense_embedding(self, mask_logits: np.ndarray | None) -> np.ndarray:
        """No mask -> the (C,) no-mask embedding; (4g, 4g) logits -> (g*g, C) (mask_downscaling)."""
        w = self.w
        if mask_logits is None:
            return w["prompt_encoder.no_mask_embed.weight"][0]
        x = mask_logits.astype(np.float32)[:, :, None]  # (H, W, 1) channels-last
        for conv, ln in (("0", "1"), ("3", "4")):
            x = _conv2x2(x, w[f"prompt_encoder.mask_downscaling.{conv}.weight"],
                         w[f"prompt_encoder.mask_downscaling.{conv}.bias"])
            x = gelu(layer_norm(x, w[f"prompt_encoder.mask_downscaling.{ln}.weight"],
                                w[f"prompt_encoder.mask_downscaling.{ln}.bias"], 1e-6))
        k = w["prompt_encoder.mask_downscaling.6.weight"]
        x = x @ k.reshape(k.shape[0], -1).T + w["prompt_encoder.mask_downscaling.6.bias"]
        return x.reshape(-1, self.dim)

    # --------------------------------------------------------------- mask decoder
    def decode(self, embedding: np.ndarray, tokens: np.ndarray, dense: np.ndarray,
               multimask: bool, chunk: int = 4, extent: tuple[int, int] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """embedding (C, g, g); tokens (B, T, C); dense (C,) shared or (g*g, C) for all B.

        Returns low-res logits (B, M, 4g, 4g) and predicted IoU (B, M); M = 3 if multimask
        else 1 — the same slices as ``MaskDecoder.forward``. Runs on torch's kernels when this
        process has already imported torch (multi-threaded), else on numpy.

        ``extent`` = (rows, cols) of the low-res logits that will be used (the unpadded part
        of the image, see :meth:`~visiontool.models.sam_upscale.MaskUpscaler.low_extent`):
        the per-position upscaling head then skips the padding; logits outside the extent are
        returned as 0.
        """
        o = _Ops.get(self)
        x = embedding.reshape(self.dim, -1).T  # (N, C)
        x0 = o.arr(np.ascontiguousarray(x + dense, dtype=np.float32))
        masks, ious = [], []
        shared: dict = {}  # products of the embedding with fixed weights, reused by every chunk
        for i in range(0, tokens.shape[0], chunk):
            m, q = self._decode_chunk(o, x0, o.arr(np.ascontiguousarray(tokens[i:i + chunk], np.float32)),
                                      multimask, shared, extent)
            masks.append(o.np(m))
            ious.append(o.np(q))
        return np.concatenate(masks), np.concatenate(ious)

    def _token_attention(self, o, name: str, q, k, v):
        """Plain attention among the few prompt tokens: (B, T, C) each."""
        wq, bq, wk, bk, wv, bv, wo, bo = o.attn(name)
        h = self.num_heads
        qq, kk, vv = o.heads(q @ wq + bq, h), o.heads(k @ wk + bk, h), o.heads(v @ wv + bv, h)
        a = o.softmax((qq @ o.perm(kk, (0, 1, 3, 2))) * np.float32(1.0 / math.sqrt(qq.shape[-1])), -1)
        return o.merge(a @ vv) @ wo + bo

    def _tokens_to_image(self, o, name: str, q, keys, kp, shared: bool, cache: dict | None = None):
        """Tokens (B, T, C) attend to image keys ((N, C) shared or (B, N, C)); -> (B, T, C)."""
        wq, bq, wk, bk, wv, bv, wo, bo = o.attn(name)
        h = self.num_heads
        b, t, _ = q.shape
        qh = o.heads(q @ wq + bq, h)  # (B, h, T, d)
        d = qh.shape[-1]
        scale = np.float32(1.0 / math.sqrt(d))
        if shared:  # project the image once for the whole batch
            cache = {} if cache is None else cache
            if ("kv", name) not in cache:  # the same for every chunk of prompts
                cache[("kv", name)] = (o.c(o.heads((kp @ wk + bk)[None], h)[0]),  # (h, N, d)
                                       o.c(o.heads((keys @ wv + bv)[None], h)[0]))
            kh, vh = cache[("kv", name)]
            a = o.softmax((qh @ o.perm(kh, (0, 2, 1))[None]) * scale, -1)  # (B, h, T, N)
            out = a @ vh[None]
        else:  # (q Wk)(X+PE)^T; the q.bk term is constant along the softmax axis
            wk3 = o.w("kh3:" + name, lambda: o.c(o.perm(wk, (1, 0)).reshape(h, d, -1)))  # (h, d, C)
            qk = o.einsum("bhtd,hdc->bhtc", qh, wk3).reshape(b, h * t, -1) * scale  # (B, hT, C)
            a = o.softmax(qk @ o.perm(kp, (0, 2, 1)), -1)  # (B, hT, N), softmax on the contiguous axis
            px = (a @ keys).reshape(b, h, t, -1)  # (B, h, T, C)
            wv3 = o.w("vh3:" + name, lambda: o.c(o.perm(wv, (1, 0)).reshape(h, d, -1)))
            out = o.einsum("bhtc,hdc->bhtd", px, wv3) + bv.reshape(h, 1, d)
        return o.merge(out) @ wo + bo

    def _image_to_tokens(self, o, name: str, kp, k_tok, v_tok):
        """Image positions attend to the tokens; the (B, N, C) update of the keys is returned
        factorised as ``A1 (B, N, hT+1) @ VW1 (B, hT+1, C)`` (the bias as a last rank-1 term)."""
        wq, bq, wk, bk, wv, bv, wo, bo = o.attn(name)
        h = self.num_heads
        b, t, _ = k_tok.shape
        kh = o.heads(k_tok @ wk + bk, h)  # (B, h, T, d)
        vh = o.heads(v_tok @ wv + bv, h)
        d = kh.shape[-1]
        # score(i, h, j) = (x_i Wq_h^T + bq_h) . k_hj = x_i . (Wq_h^T k_hj) + bq_h . k_hj
        wq3 = o.w("qh3:" + name, lambda: o.c(o.perm(wq, (1, 0)).reshape(h, d, -1)))  # (h, d, C)
        m = o.c(o.einsum("hdc,bhjd->bchj", wq3, kh).reshape(b, -1, h * t))  # (B, C, hT)
        c = o.einsum("hd,bhjd->bhj", bq.reshape(h, d), kh).reshape(b, 1, h * t)
        s = (kp @ m + c) * np.float32(1.0 / math.sqrt(d))  # (B, N, hT); kp = keys + PE
        a = o.softmax_small(s.reshape(b, -1, h, t)).reshape(b, -1, h * t)
        # A (V Wo^T): fold the output projection into the T value vectors of each head
        wo3 = o.w("oh3:" + name, lambda: o.c(o.perm(wo.reshape(h, d, -1), (0, 1, 2))))  # (h, d, C)
        vw = o.einsum("bhjd,hdc->bhjc", vh, wo3).reshape(b, h * t, -1)
        # the update is a @ vw + bo, returned as [a, 1] @ [vw; bo] (rank h*T + 1)
        a1 = o.cat([a, o.ones(a.shape[:2] + (1,))], -1)
        vw1 = o.cat([vw, o.bcast(bo.reshape(1, 1, -1), (b, 1, bo.shape[0]))], 1)
        return o.c(a1), o.c(vw1)

    def _project_keys(self, o, x0, hist: list, m, tag: str, shared_cache: dict):
        """``keys_L @ m`` for the keys after all L blocks, without forming ``keys_L @ m`` per
        prompt: each block's keys are LayerNorm(previous + A VW + bo), so

            keys_l m = r_l * ((keys_{l-1} + A_l VW_l + bo_l - mu_l) (gamma_l m)) + beta_l m

        and recursively down to the shared embedding ``x0 @ (gamma_1 ... gamma_L m)``, which is
        computed once per image. Per prompt this costs N x hT x D per block instead of N x C x D.
        """
        def proj(level: int, mm, key: str):
            if level == 0:
                if key not in shared_cache:
                    shared_cache[key] = x0 @ mm
                return shared_cache[key]
            a1, vw1, mu, r, gamma, beta = hist[level - 1]
            gm = gamma[:, None] * mm  # (C, D)
            b = a1.shape[0]
            # inner = prev @ gm + [A, 1, -mu] @ [VW gm; bo gm; 1^T gm]  (one batched GEMM pass)
            lhs = o.cat([a1, -mu], -1)
            rhs = o.cat([vw1 @ gm, o.bcast(gm.sum(0).reshape(1, 1, -1), (b, 1, gm.shape[1]))], 1)
            inner = o.baddbmm(proj(level - 1, gm, key + "g"), lhs, rhs)
            return o.addcmul(beta @ mm, r, inner)  # r * inner + beta m

        return proj(len(hist), m, tag)

    def _decode_chunk(self, o, x0, tokens, multimask: bool, shared_cache: dict, extent=None):
        pfx = "mask_decoder."
        W = o.raw
        b = tokens.shape[0]
        out_tok = o.cat([W(pfx + "iou_token.weight"), W(pfx + "mask_tokens.weight")], 0)
        tok = o.cat([o.bcast(out_tok[None], (b,) + tuple(out_tok.shape)), tokens], 1)
        pe = o.w("dense_pe", lambda: o.arr(self.dense_pe()))
        queries, keys, shared = tok, x0, True
        hist: list = []  # per block: the factorised key update and its LayerNorm (see _project_keys)
        for i in range(self.depth):
            L = f"{pfx}transformer.layers.{i}."
            if i == 0:  # skip_first_layer_pe
                queries = self._token_attention(o, L + "self_attn", queries, queries, queries)
            else:
                qp = queries + tok
                queries = queries + self._token_attention(o, L + "self_attn", qp, qp, queries)
            queries = o.ln(queries, L + "norm1", 1e-5)
            if shared:
                if "kp0" not in shared_cache:
                    shared_cache["kp0"] = keys + pe
                kp = shared_cache["kp0"]
            else:
                kp = keys + pe  # shared by both cross-attentions of this block
            queries = queries + self._tokens_to_image(o, L + "cross_attn_token_to_image", queries + tok, keys, kp,
                                                      shared, shared_cache)
            queries = o.ln(queries, L + "norm2", 1e-5)
            hmid = o.relu(queries @ o.lin(L + "mlp.lin1.weight") + W(L + "mlp.lin1.bias"))
            queries = queries + hmid @ o.lin(L + "mlp.lin2.weight") + W(L + "mlp.lin2.bias")
            queries = o.ln(queries, L + "norm3", 1e-5)
            a1, vw1 = self._image_to_tokens(o, L + "cross_attn_image_to_token", kp, queries + tok, queries)
            y = o.baddbmm(keys, a1, vw1)  # keys + A VW + bo in one pass
            keys, mu, r = o.ln_with_stats(y, L + "norm4", 1e-5)
            hist.append((a1, vw1, mu, r, o.raw(L + "norm4.weight"), o.raw(L + "norm4.bias")))
            shared = False
        F = pfx + "transformer."
        queries = queries + self._tokens_to_image(o, F + "final_attn_token_to_image", queries + tok, keys,
                                                  keys + pe, shared)
        queries = o.ln(queries, F + "norm_final_attn", 1e-5)

        sel = list(range(1, self.n_mask_tokens)) if multimask else [0]
        # upscale the image side to (B, 4g, 4g, C/8). ConvTranspose(2, stride 2) is a per-position
        # matmul; its output stays in sub-pixel order (g, g, 2, 2, ...) until the final masks.
        g = self.grid
        gr, gc = g, g
        if extent is not None:  # embedding cells whose 4x4 logits are used
            gr, gc = min(g, -(-int(extent[0]) // 4)), min(g, -(-int(extent[1]) // 4))
        if (gr, gc) != (g, g):
            def crop(x):  # (..., g*g, D) -> (..., gr*gc, D), row-major cells
                lead = tuple(x.shape[:-2])
                return o.c(x.reshape(lead + (g, g, x.shape[-1]))[..., :gr, :gc, :]).reshape(
                    lead + (gr * gc, x.shape[-1]))
            x0u = crop(x0)
            histu = [(crop(a1), vw1, crop(mu), crop(r), gm_, bt) for a1, vw1, mu, r, gm_, bt in hist]
            cache_key = f"k1@{gr}x{gc}"
        else:
            x0u, histu, cache_key = x0, hist, "k1"
        k1, b1 = o.convt_w(pfx + "output_upscaling.0")  # (C, 4*C1), (4*C1,)
        u = self._project_keys(o, x0u, histu, k1, cache_key, shared_cache) + b1  # == keys @ k1 + b1
        c1 = k1.shape[1] // 4
        u = o.gelu(o.ln(u.reshape(b, gr * gc * 4, c1), pfx + "output_upscaling.1", 1e-6))
        k2, b2 = o.convt_w(pfx + "output_upscaling.3")  # (C1, 4*C2)
        u = o.gelu(o.addmm(b2, u.reshape(-1, c1), k2)).reshape(b, gr * gc * 4, -1)  # (B, cells*4, 4*C2)
        c2 = k2.shape[1] // 4
        hyper = o.stack([o.mlp(queries[:, 1 + j], f"{pfx}output_hypernetworks_mlps.{j}.", 3) for j in sel], 2)
        m = u.reshape(b, gr * gc * 16, c2) @ hyper  # (B, cells*16, M)
        m = o.perm(m.reshape(b, gr, gc, 2, 2, 2, 2, len(sel)), (0, 7, 1, 3, 5, 2, 4, 6))
        m = o.c(m).reshape(b, len(sel), 4 * gr, 4 * gc)
        if (gr, gc) != (g, g):
            full = np.zeros((b, len(sel), 4 * g, 4 * g), np.float32)
            full[:, :, :4 * gr, :4 * gc] = o.np(m)
            m = o.arr(full)
        masks = m
        iou = o.mlp(queries[:, 0], pfx + "iou_prediction_head.", self.iou_depth)[:, sel]
        return masks, iou


class _Ops(ArrayOps):
    """The few array operations the decoder needs, on numpy or (if loaded) torch."""

    def __init__(self, dec: "NumpySamDecoder", torch_mod=None):
        self.dec, self.t = dec, torch_mod
        self._cache: dict = {}

    @staticmethod
    def get(dec: "NumpySamDecoder") -> "_Ops":
        t = sam_array_ops.loaded_torch()  # looked up here: a test makes it report no torch
        key = "_ops_torch" if t is not None else "_ops_numpy"
        ops = dec.__dict__.get(key)
        if ops is None:
            ops = _Ops(dec, t)
            dec.__dict__[key] = ops
        return ops

    def w(self, key: str, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def raw(self, name: str):
        return self.w("raw:" + name, lambda: self.arr(self.dec.w[name]))

    def lin(self, name: str):  # Linear weight, transposed for x @ W
        return self.w("lin:" + name, lambda: self.c(self.perm(self.raw(name), (1, 0))))

    def attn(self, name: str):
        return tuple(self.lin(f"{name}.{p}.weight") if t == "weight" else self.raw(f"{name}.{p}.bias")
                     for p in ("q_proj", "k_proj", "v_proj", "out_proj") for t in ("weight", "bias"))

    # shape ops
    def einsum(self, spec, *xs):
        return self.t.einsum(spec, *xs) if self.t is not None else np.einsum(spec, *xs)

    def merge(self, x):
        b, h, n, d = x.shape
        return self.perm(x, (0, 2, 1, 3)).reshape(b, n, h * d)

    # math
    def relu(self, x):
        return self.t.relu(x) if self.t is not None else np.maximum(x, 0)

    def softmax(self, x, axis):
        return self.t.softmax(x, dim=axis) if self.t is not None else softmax(x, axis)

    def softmax_small(self, x):
        """Softmax over a short last axis (the few prompt tokens): plain elementwise passes are
        faster there than torch's softmax kernel."""
        if self.t is None:
            return softmax(x, -1)
        e = (x - x.amax(-1, keepdim=True)).exp_()
        return e.div_(e.sum(-1, keepdim=True))

    def addmm(self, bias, x, w):
        """bias + x @ w for 2-D x."""
        return self.t.addmm(bias, x, w) if self.t is not None else x @ w + bias

    def gelu(self, x):
        return self.t.nn.functional.gelu(x) if self.t is not None else gelu(x)

    def ln(self, x, name: str, eps: float):
        wgt, bias = self.raw(name + ".weight"), self.raw(name + ".bias")
        if self.t is not None:
            return self.t.nn.functional.layer_norm(x, (x.shape[-1],), wgt, bias, eps)
        return layer_norm(x, wgt, bias, eps)

    def mlp(self, x, prefix: str, depth: int):
        for i in range(depth):
            x = x @ self.lin(f"{prefix}layers.{i}.weight") + self.raw(f"{prefix}layers.{i}.bias")
            if i < depth - 1:
                x = self.relu(x)
        return x

    def ones(self, shape):
        return self.t.ones(shape) if self.t is not None else np.ones(shape, np.float32)

    def baddbmm(self, inp, a, b):
        """inp + a @ b (inp broadcast over the batch)."""
        if self.t is not None:
            if inp.dim() == 2:
                inp = inp.expand(a.shape[0], *inp.shape)
            return self.t.baddbmm(inp, a, b)
        return inp + a @ b

    def addcmul(self, c, r, x):
        """c + r * x."""
        return self.t.addcmul(c, r, x) if self.t is not None else c + r * x

    def ln_with_stats(self, y, name: str, eps: float):
        """LayerNorm over the last axis and its per-row mean and 1/std (keepdims), in one pass."""
        wgt, bias = self.raw(name + ".weight"), self.raw(name + ".bias")
        if self.t is not None:
            out, mu, r = self.t.native_layer_norm(y, (y.shape[-1],), wgt, bias, eps)
            return out, mu, r
        mu, r = self.ln_stats(y, eps)
        return (y - mu) * r * wgt + bias, mu, r

    def ln_stats(self, y, eps: float):
        """Per-row mean and 1/std over the last axis (LayerNorm's statistics), keepdims."""
        if self.t is not None:
            var, mu = self.t.var_mean(y, dim=-1, keepdim=True, correction=0)
            return mu, self.t.rsqrt(var + eps)
        mu = y.mean(-1, keepdims=True)
        yc = y - mu
        var = (yc * yc).mean(-1, keepdims=True)
        return mu, 1.0 / np.sqrt(var + np.float32(eps))

    def convt_w(self, name: str):
        """ConvTranspose2d(2, stride 2) weight (Ci, Co, 2, 2) as a (Ci, 4*Co) matrix in sub-pixel-major
        order (kh, kw, co), and the bias tiled to match."""
        def make():
            k = self.raw(name + ".weight")
            ci, co = k.shape[0], k.shape[1]
            km = self.c(self.perm(k, (0, 2, 3, 1))).reshape(ci, 4 * co)
            bias = self.raw(name + ".bias")
            tiled = self.cat([bias] * 4, 0)
            return km, tiled

        return self.w("convt:" + name, make)

    def convt(self, x, name: str):
        """ConvTranspose2d(kernel 2, stride 2), channels last: (B, H, W, Ci) -> (B, 2H, 2W, Co)."""
        k = self.raw(name + ".weight")  # (Ci, Co, 2, 2)
        ci, co = k.shape[0], k.shape[1]
        b, hh, ww, _ = x.shape
        y = (x.reshape(-1, ci) @ k.reshape(ci, co * 4)).reshape(b, hh, ww, co, 2, 2)
        y = self.perm(y, (0, 1, 4, 2, 5, 3)).reshape(b, 2 * hh, 2 * ww, co)
        return y + self.raw(name + ".bias")


def _conv2x2(x: np.ndarray, k: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Conv2d(kernel 2, stride 2), channels last: (H, W, Ci) -> (H/2, W/2, Co); k (Co, Ci, 2, 2)."""
    hh, ww, ci = x.shape
    co = k.shape[0]
    p = x.reshape(hh // 2, 2, ww // 2, 2, ci).transpose(0, 2, 4, 1, 3).reshape(hh // 2, ww // 2, ci * 4)
    return p @ k.reshape(co, ci * 4).T + bias
