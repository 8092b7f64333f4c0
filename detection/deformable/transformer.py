"""Deformable DETR encoder–decoder (Zhu et al. 2021): deformable self-attention over the
multi-scale maps in the encoder, deformable cross-attention from the object queries in the
decoder, with reference points, level embeddings, optional iterative box refinement and the
two-stage variant (queries initialised from the encoder's top-scoring proposals).

Boxes are normalised (cx, cy, w, h) in [0, 1] of the valid (unpadded) image; masks are True at
padding.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from detection.deformable.ms_deform_attn import LevelShapes, MSDeformAttn


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """logit(x), clamped so that 0 and 1 stay finite."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class _FFN(nn.Module):
    """Post-norm FFN of both layers (official names): ``norm(x + dropout(linear2(dropout(relu(linear1(x))))))``,
    the norm being ``norm2`` in the encoder and ``norm3`` in the decoder."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float) -> None:
        super().__init__()
        self.linear1, self.linear2 = nn.Linear(d_model, d_ffn), nn.Linear(d_ffn, d_model)

    def ffn(self, x: Tensor, dropouts: tuple[nn.Dropout, nn.Dropout], norm: nn.LayerNorm) -> Tensor:
        return norm(x + dropouts[1](self.linear2(dropouts[0](F.relu(self.linear1(x))))))


class DeformableEncoderLayer(_FFN):
    """Deformable self-attention over all levels (``self_attn``, ``norm1``) then the FFN (``norm2``).

    While training, the layer keeps only its inputs for backward and recomputes its activations there
    (``torch.utils.checkpoint``, random state restored: the same values and gradients). At 800×1333 a
    layer's activations — the projections, sampling locations and attention weights, the FFN's d_ffn
    hidden layer, the norms' inputs, dropout masks — are about 0.2 GB per image besides the samples, which
    the sampling never keeps (``ms_deform_attn_pytorch``), as the official CUDA kernel does not. The price
    is one more forward of each encoder layer per step. ``recompute_in_backward = False`` keeps every
    activation of every layer (a faster step for more memory: docs/deformable.md). Layers whose input has
    fewer than ``recompute_min_elements`` values (small images or batches, e.g. the demo's 96-px detectors)
    keep their activations: there the recomputation costs more time than its memory is worth."""

    recompute_in_backward = True
    recompute_min_elements = 2**21  # 8 MB per (B, S, C) float32 activation; pit_s at 800×1333: 5.6 M per image

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__(d_model, d_ffn, dropout)
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1, self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor, spatial_shapes: Tensor,
                level_shapes: LevelShapes, padding_mask: Tensor) -> Tensor:
        args = (src, pos, reference_points, spatial_shapes, level_shapes, padding_mask)
        if (self.recompute_in_backward and self.training and torch.is_grad_enabled()
                and src.numel() >= self.recompute_min_elements):
            return checkpoint(self._layer, *args, use_reentrant=False)
        return self._layer(*args)

    def _layer(self, src: Tensor, pos: Tensor, reference_points: Tensor, spatial_shapes: Tensor,
               level_shapes: LevelShapes, padding_mask: Tensor) -> Tensor:
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, padding_mask, level_shapes)
        src = self.norm1(src + self.dropout1(attended))
        return self.ffn(src, (self.dropout2, self.dropout3), self.norm2)


class DeformableDecoderLayer(_FFN):
    """Query self-attention (``self_attn``, ``norm2``), deformable cross-attention to the encoder
    memory (``cross_attn``, ``norm1``), FFN (``norm3``) — post-norm, official names."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__(d_model, d_ffn, dropout)
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.dropout3, self.dropout4 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(
        self, tgt: Tensor, query_pos: Tensor, reference_points: Tensor, memory: Tensor,
        spatial_shapes: Tensor, level_shapes: LevelShapes, memory_padding_mask: Tensor,
    ) -> Tensor:
        q = k = tgt + query_pos
        tgt = self.norm2(tgt + self.dropout2(self.self_attn(q, k, tgt, need_weights=False)[0]))
        attended = self.cross_attn(
            tgt + query_pos, reference_points, memory, spatial_shapes, memory_padding_mask, level_shapes
        )
        tgt = self.norm1(tgt + self.dropout1(attended))
        return self.ffn(tgt, (self.dropout3, self.dropout4), self.norm3)


class _Layers(nn.Module):
    """``layers``: N copies of one layer (official ``transformer.{encoder,decoder}.layers.N``)."""

    def __init__(self, layer: nn.Module, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))


def encoder_reference_points(level_shapes: LevelShapes, valid_ratios: Tensor) -> Tensor:
    """Pixel centres of every level as reference points for every level.

    Args:
        level_shapes: (h, w) per level (Python ints); valid_ratios: (B, L, 2) valid fraction (x, y) per level.

    Returns:
        (B, S, L, 2) normalised (x, y) of each level's valid area.
    """
    points = []
    for level, (h, w) in enumerate(level_shapes):
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=valid_ratios.dtype, device=valid_ratios.device) + 0.5,
            torch.arange(w, dtype=valid_ratios.dtype, device=valid_ratios.device) + 0.5,
            indexing="ij",
        )
        xs = xs.reshape(1, -1) / (valid_ratios[:, None, level, 0] * w)
        ys = ys.reshape(1, -1) / (valid_ratios[:, None, level, 1] * h)
        points.append(torch.stack([xs, ys], -1))
    return torch.cat(points, 1)[:, :, None] * valid_ratios[:, None]


def valid_ratio(mask: Tensor) -> Tensor:
    """(B, h, w) padding mask (True = padding) → (B, 2) valid fraction (x, y) of the map."""
    valid_h = (~mask[:, :, 0]).sum(1).to(torch.float32)
    valid_w = (~mask[:, 0, :]).sum(1).to(torch.float32)
    return torch.stack([valid_w / mask.shape[2], valid_h / mask.shape[1]], -1)


def proposal_pos_embed(proposals: Tensor, num_pos_feats: int, temperature: float = 10000.0) -> Tensor:
    """Sine embedding of (B, Q, 4) normalised boxes → (B, Q, 4·num_pos_feats)."""
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=proposals.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
    pos = proposals.float()[..., None] * (2 * math.pi) / dim_t  # (B, Q, 4, F)
    pos = torch.stack([pos[..., 0::2].sin(), pos[..., 1::2].cos()], -1).flatten(-2)
    return pos.flatten(2)


def encoder_proposals(memory: Tensor, padding_mask: Tensor, level_shapes: LevelShapes) -> tuple[Tensor, Tensor]:
    """One box proposal per encoder token (its pixel centre, size 0.05·2^level); ``level_shapes``:
    (h, w) per level (Python ints).

    Returns:
        masked memory (B, S, C) (zero at padding or invalid proposals) and the proposals
        (B, S, 4) in inverse-sigmoid space (+inf where invalid).
    """
    batch = memory.shape[0]
    proposals, start = [], 0
    for level, (h, w) in enumerate(level_shapes):
        mask_l = padding_mask[:, start:start + h * w].view(batch, h, w)
        valid_wh = torch.stack([(~mask_l[:, 0, :]).sum(1), (~mask_l[:, :, 0]).sum(1)], -1).to(memory.dtype)
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=memory.dtype, device=memory.device),
            torch.arange(w, dtype=memory.dtype, device=memory.device), indexing="ij",
        )
        centres = (torch.stack([xs, ys], -1)[None] + 0.5) / valid_wh[:, None, None, :]  # (B, h, w, 2)
        sizes = torch.full_like(centres, 0.05 * 2.0 ** level)
        proposals.append(torch.cat([centres, sizes], -1).view(batch, -1, 4))
        start += h * w
    proposals = torch.cat(proposals, 1)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True) & ~padding_mask[..., None]
    proposals = inverse_sigmoid(proposals).masked_fill(~valid, float("inf"))
    return memory.masked_fill(~valid, 0.0), proposals


@dataclass
class TransformerOutput:
    """hs: (D, B, Q, C) decoder outputs per layer; init_reference: (B, Q, 2|4) in [0, 1];
    inter_references: (D, B, Q, 2|4) references after each layer; enc_logits/enc_boxes_unact:
    (B, S, K) and (B, S, 4) pre-sigmoid encoder proposals (two-stage only)."""

    hs: Tensor
    init_reference: Tensor
    inter_references: Tensor
    enc_logits: Tensor | None = None
    enc_boxes_unact: Tensor | None = None


class DeformableTransformer(nn.Module):
    """Deformable encoder (``num_encoder_layers``) + decoder (``num_decoder_layers``).

    Args:
        d_model, nhead, dim_feedforward, dropout: widths as in Deformable DETR (256, 8, 1024, 0.1).
        num_feature_levels, enc_n_points, dec_n_points: L and P of the deformable attention.
        two_stage: initialise queries from encoder proposals; ``two_stage_num_proposals`` of them.
    """

    def __init__(
        self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
        dim_feedforward: int = 1024, dropout: float = 0.1, num_feature_levels: int = 4,
        enc_n_points: int = 4, dec_n_points: int = 4, two_stage: bool = False, two_stage_num_proposals: int = 300,
    ) -> None:
        super().__init__()
        self.d_model, self.two_stage, self.num_proposals = d_model, two_stage, two_stage_num_proposals
        enc_layer = DeformableEncoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points)
        dec_layer = DeformableDecoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, nhead, dec_n_points)
        self.encoder, self.decoder = _Layers(enc_layer, num_encoder_layers), _Layers(dec_layer, num_decoder_layers)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = nn.Linear(2 * d_model, 2 * d_model)
            self.pos_trans_norm = nn.LayerNorm(2 * d_model)
        else:
            self.reference_points = nn.Linear(d_model, 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        if not self.two_stage:
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    def encode(self, srcs: list[Tensor], masks: list[Tensor], pos_embeds: list[Tensor]
               ) -> tuple[Tensor, Tensor, Tensor, LevelShapes, Tensor]:
        """Flatten the levels and run the encoder → memory (B, S, C), padding mask (B, S),
        spatial shapes (L, 2) and the same as Python ints (read once here from the maps' sizes, so
        no layer syncs with the device to learn them), valid ratios (B, L, 2)."""
        level_shapes = tuple((int(src.shape[-2]), int(src.shape[-1])) for src in srcs)
        shapes = torch.tensor(level_shapes, dtype=torch.long, device=srcs[0].device)
        src_flat = torch.cat([rearrange(s, "b c h w -> b (h w) c") for s in srcs], 1)
        mask_flat = torch.cat([m.flatten(1) for m in masks], 1)
        pos_flat = torch.cat(
            [rearrange(p, "b c h w -> b (h w) c") + self.level_embed[lvl] for lvl, p in enumerate(pos_embeds)], 1
        )
        valid_ratios = torch.stack([valid_ratio(m) for m in masks], 1).to(src_flat.dtype)
        reference_points = encoder_reference_points(level_shapes, valid_ratios)
        memory = src_flat
        for layer in self.encoder.layers:
            memory = layer(memory, pos_flat, reference_points, shapes, level_shapes, mask_flat)
        return memory, mask_flat, shapes, level_shapes, valid_ratios

    def forward(
        self, srcs: list[Tensor], masks: list[Tensor], pos_embeds: list[Tensor], query_embed: Tensor | None,
        box_heads: nn.ModuleList | None = None, proposal_heads: tuple[nn.Module, nn.Module] | None = None,
    ) -> TransformerOutput:
        """Encode the levels and decode the queries.

        Args:
            srcs, pos_embeds: per level (B, C, h_l, w_l); masks: per level (B, h_l, w_l), True = padding.
            query_embed: (Q, 2C) learned [positional | content] query embeddings (None when two-stage).
            box_heads: per decoder layer, the box MLP used for iterative refinement (None = no refinement).
            proposal_heads: (class head, box head) scoring the encoder proposals (two-stage only).
        """
        memory, mask_flat, shapes, level_shapes, valid_ratios = self.encode(srcs, masks, pos_embeds)
        batch = memory.shape[0]
        enc_logits = enc_boxes_unact = None
        if self.two_stage:
            if proposal_heads is None:
                raise ValueError("two-stage decoding needs proposal_heads=(class head, box head)")
            output_memory, proposals = encoder_proposals(memory, mask_flat, level_shapes)
            output_memory = self.enc_output_norm(self.enc_output(output_memory))
            enc_logits = proposal_heads[0](output_memory)
            enc_boxes_unact = proposal_heads[1](output_memory) + proposals
            topk = enc_logits[..., 0].topk(self.num_proposals, dim=1).indices
            topk_boxes = torch.gather(enc_boxes_unact, 1, topk[..., None].expand(-1, -1, 4)).detach()
            reference_points = topk_boxes.sigmoid()
            pos_tgt = self.pos_trans_norm(self.pos_trans(proposal_pos_embed(topk_boxes.sigmoid(), self.d_model // 2)))
            query_pos, tgt = pos_tgt.to(memory.dtype).split(self.d_model, dim=-1)
        else:
            query_pos, tgt = query_embed.split(self.d_model, dim=-1)
            query_pos = query_pos[None].expand(batch, -1, -1)
            tgt = tgt[None].expand(batch, -1, -1)
            reference_points = self.reference_points(query_pos).sigmoid()
        init_reference = reference_points
        outputs, references = [], []
        for lid, layer in enumerate(self.decoder.layers):
            if reference_points.shape[-1] == 4:
                ref_input = reference_points[:, :, None] * torch.cat([valid_ratios, valid_ratios], -1)[:, None]
            else:
                ref_input = reference_points[:, :, None] * valid_ratios[:, None]
            tgt = layer(tgt, query_pos, ref_input, memory, shapes, level_shapes, mask_flat)
            if box_heads is not None:
                delta = box_heads[lid](tgt)
                if reference_points.shape[-1] == 4:
                    refined = (delta + inverse_sigmoid(reference_points)).sigmoid()
                else:
                    refined = torch.cat([delta[..., :2] + inverse_sigmoid(reference_points), delta[..., 2:]], -1).sigmoid()
                reference_points = refined.detach()
            outputs.append(tgt)
            references.append(reference_points)
        return TransformerOutput(torch.stack(outputs), init_reference, torch.stack(references), enc_logits, enc_boxes_unact)
