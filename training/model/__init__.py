"""The AIM model: a prefix-causal ViT trunk with an MLP head that regresses the next patch's pixels.

One file per concept: pos_embed, patch_embed, prefix (prefix lengths and masks), attention (the
backends), blocks (trunk transformer block), head, loss, aim (the model), flops, mlaim_compat.
"""
